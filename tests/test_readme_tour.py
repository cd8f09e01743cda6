"""README.md's API tour runs as pasted, and what it says it prints is what it prints.

The tour block is run as a script in a subprocess (the packaged MiniLM-L6, offline); each
`print(...)  # TEXT` line of it must print TEXT. The parameter counts it quotes appear again in the
quickstart config's docstring and docs/performance.md; those must be the same numbers.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.readme_commands import ROOT


def _python_blocks(markdown: str) -> list[str]:
  return re.findall(r'^```python\n(.*?)^```', markdown, flags=re.S | re.M)


def _printed_claims(block: str) -> list[str]:
  """The TEXT of each `print(...)  # TEXT` line."""
  return [m.group(1).strip() for m in re.finditer(r'^print\(.*\)[ \t]+# (.*)$', block, flags=re.M)]


@pytest.mark.slow
def test_tour_prints_what_the_readme_says(tmp_path):
  readme = (ROOT / 'README.md').read_text()
  (tour,) = [b for b in _python_blocks(readme) if 'load_pretrained' in b and 'save_adapter' in b]
  claims = _printed_claims(tour)
  assert claims, 'the tour prints nothing it quotes'
  script = tmp_path / 'tour.py'
  script.write_text(tour.replace('/tmp/sst2_adapter', str(tmp_path / 'sst2_adapter')))
  env = {**os.environ, 'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = proc.stdout.strip().splitlines()
  assert printed == claims
  # The same trained count where the quickstart (the same Houlsby-64 model) quotes it.
  trained = re.match(r'([\d,]+) trainable of ([\d,]+) \(([\d.]+)%\)', printed[0])
  assert trained, printed[0]
  count, total, percent = trained.groups()
  for path in ('experiments/configs/quickstart.py', 'docs/performance.md'):
    text = (ROOT / path).read_text()
    assert count in text, f'{path} does not quote the trained count {count}'
    assert f'{float(percent):.1f}%' in text, f'{path} does not quote the share {float(percent):.1f}%'
  assert f'({float(percent):.1f}%)' in readme  # "the trainable-parameter share (2.6%)"

"""What `experiments.predict` and `experiments.export` say about unusual input and damaged run
files: one line on stderr each, no traceback, outputs lined up with input lines.

One smoke run is trained per module; each test damages its own copy.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from adapters_jax.checkpoint.digest import DIGEST_FILE
from adapters_jax.train import loop
from tests.train.test_loop import ROOT, smoke_config

ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}


@pytest.fixture(scope='module')
def trained(tiny_bert_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  loop.train_and_evaluate(smoke_config(tiny_bert_dir), str(workdir))
  return workdir


@pytest.fixture
def run(trained, tmp_path):
  """A copy of the trained run to damage."""
  return shutil.copytree(trained, tmp_path / 'run')


def _cli(module, *args, stdin=b''):
  proc = subprocess.run([sys.executable, '-m', module, *args], input=stdin, cwd=ROOT, env=ENV,
                        capture_output=True, timeout=600)
  return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _one_line(returncode, stderr):
  assert returncode != 0
  assert 'Traceback' not in stderr and 'Event loop is closed' not in stderr, stderr[-3000:]
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def _damage_best(run):
  """Truncates one params data file of best/, as a full disk or a broken copy leaves it."""
  data = sorted(p for p in (run / 'best' / 'params').rglob('*') if p.is_file()
                and p.parent.name == 'd')[0]
  data.write_bytes(data.read_bytes()[:10])
  return data.relative_to(run / 'best')


@pytest.mark.slow
def test_blank_lines_are_answered_in_place_and_line_endings_stripped(run):
  # Bugs caught: blank lines dropped (outputs shift against inputs), a kept \r (another text for
  # the tokenizer: the same sentence would get other probabilities).
  code, out, err = _cli('experiments.predict', f'--workdir={run}',
                        stdin=b'A triumph.\r\n\n  \nA triumph.\nA dull mess.')
  assert code == 0, err[-3000:]
  rows = [json.loads(line) for line in out.splitlines()]
  assert [row['text'] for row in rows] == ['A triumph.', '', '', 'A triumph.', 'A dull mess.']
  assert rows[1] == rows[2] == {'text': '', 'error': 'blank line'}
  assert rows[0]['probabilities'] == rows[3]['probabilities']  # \r\n and \n: the same text
  assert all('label' in rows[i] for i in (0, 3, 4))


@pytest.mark.slow
def test_input_that_is_not_utf8_names_source_line_and_byte(run, tmp_path):
  # 'ok\n' is 3 bytes, so line 2's \xe9 (latin-1 for é) is byte 3 + 3 of the input.
  code, out, err = _cli('experiments.predict', f'--workdir={run}', stdin=b'ok\ncaf\xe9\n')
  assert out == ''
  assert 'stdin line 2 is not UTF-8: byte 6 of the input (3 of the line)' in _one_line(code, err)
  path = tmp_path / 'latin1.txt'
  path.write_bytes(b'ok\ncaf\xe9\n')
  code, _, err = _cli('experiments.predict', f'--workdir={run}', f'--input={path}')
  assert f'{path} line 2 is not UTF-8' in _one_line(code, err)


@pytest.mark.slow
def test_a_mistyped_workdir_names_the_closest_sibling(run):
  typo = run.parent / 'rnu'
  code, _, err = _cli('experiments.predict', f'--workdir={typo}', stdin=b'A triumph.\n')
  assert _one_line(code, err) == f'Cannot predict: No workdir {typo}; did you mean {run}?'


@pytest.mark.slow
def test_empty_input_prints_nothing_and_reads_no_run_file(run):
  # A damaged best/ proves the model is never loaded: reading it would fail.
  _damage_best(run)
  assert _cli('experiments.predict', f'--workdir={run}', stdin=b'') == (0, '', '')


@pytest.mark.slow
def test_a_damaged_best_checkpoint_is_one_line_naming_it_for_predict_and_export(run, tmp_path):
  # Bug caught: Orbax reading the truncated file, failing halfway (tracebacks of pending reads).
  damaged = _damage_best(run)
  code, out, err = _cli('experiments.predict', f'--workdir={run}', stdin=b'A triumph.\n')
  line = _one_line(code, err)
  assert out == ''
  assert (f'Checkpoint {run / "best"} is damaged: 1 file(s) differ from its {DIGEST_FILE} '
          f'(e.g. {damaged}); restore a copy of it') in line
  code, _, err = _cli('experiments.export', f'--workdir={run}', '--format=adapters',
                      f'--out={tmp_path / "exported"}')
  assert f'Checkpoint {run / "best"} is damaged' in _one_line(code, err)
  assert not (tmp_path / 'exported').exists()


@pytest.mark.slow
def test_a_truncated_config_names_the_file_and_the_position(run):
  config = run / 'config.json'
  config.write_text(config.read_text()[:40])
  try:
    json.loads(config.read_text())
  except json.JSONDecodeError as e:
    where = f'line {e.lineno} column {e.colno} (char {e.pos})'
  code, _, err = _cli('experiments.predict', f'--workdir={run}', stdin=b'A triumph.\n')
  line = _one_line(code, err)
  assert f'{config} is not valid JSON' in line and where in line
  assert 'result.json holds its config' in line

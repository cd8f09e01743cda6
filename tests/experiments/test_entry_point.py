"""Entry points start without importing PyTorch, even where it is installed (as it is for these
tests): `transformers` would import it with the first tokenizer."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PROGRAM = '''
import sys
from experiments import entry_point
from adapters_jax.models.hf_files import load_tokenizer

def main(argv):
  from tests.tiny_bert import minilm_dir  # imports transformers: after the entry point's setting

  tokenizer = load_tokenizer(minilm_dir())
  print(type(tokenizer).__name__, 'torch' in sys.modules)

entry_point.run(main)
'''


@pytest.mark.slow
@pytest.mark.parametrize('use_torch, imported', [(None, False), ('1', True)])
def test_a_tokenizer_loads_without_torch_unless_the_environment_asks(use_torch, imported):
  # Bug caught: `transformers` importing torch (1.5 s) at every CLI start; an explicit USE_TORCH
  # from the user overridden.
  env = {k: v for k, v in os.environ.items() if k != 'USE_TORCH'}
  if use_torch is not None:
    env['USE_TORCH'] = use_torch
  done = subprocess.run([sys.executable, '-c', _PROGRAM], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ['BertTokenizerFast', str(imported)]

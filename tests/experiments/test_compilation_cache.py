"""`--compilation_cache_dir`: on by default, filled by a run, read back by a restart, off when empty."""

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train(workdir, model_dir, cache_home, *flags) -> float:
  """Runs a tiny quickstart run with `$XDG_CACHE_HOME=cache_home` and no `$JAX_COMPILATION_CACHE_DIR`
  (so the flag's own default applies); returns its wall time in seconds."""
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', XDG_CACHE_HOME=str(cache_home),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  start = time.perf_counter()
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--config=experiments/configs/quickstart.py:smoke',
       f'--workdir={workdir}', f'--config.model={model_dir}', '--config.tensorboard=False',
       '--config.num_train_steps=4', '--config.eval_every_steps=4', *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return time.perf_counter() - start


def _entries(directory) -> set[str]:
  return set(os.listdir(directory)) if os.path.isdir(directory) else set()


@pytest.mark.slow
def test_a_second_start_reads_every_program_from_the_cache_and_empty_turns_it_off(tiny_bert_dir,
                                                                                 tmp_path):
  # Bugs caught: the cache not on by default (no entries under the user's cache folder); a restart
  # that compiles again (new entries on the second start); a given directory or an empty value
  # ignored.
  cache = tmp_path / 'home_cache' / 'adapters_jax' / 'xla'
  cold = _train(tmp_path / 'first', tiny_bert_dir, tmp_path / 'home_cache')
  written = _entries(cache)
  assert written, 'the first run wrote no compiled program'
  warm = _train(tmp_path / 'second', tiny_bert_dir, tmp_path / 'elsewhere',
                f'--compilation_cache_dir={cache}')
  assert _entries(cache) == written  # every program of the same run came from the cache
  assert not _entries(tmp_path / 'elsewhere' / 'adapters_jax' / 'xla')
  print(f'start to finish: {cold:.1f} s compiling, {warm:.1f} s from the cache')
  _train(tmp_path / 'off', tiny_bert_dir, tmp_path / 'off_home', '--compilation_cache_dir=')
  assert not _entries(tmp_path / 'off_home' / 'adapters_jax' / 'xla')

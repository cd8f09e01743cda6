"""Shared test setup: keep XLA on the CPU and quiet, and share one XLA compilation cache.

The CLI tests start many processes that compile the same tiny programs; JAX's persistent
compilation cache lets each program compile once per test run (about a third of the suite's CPU
time). The cache lives in a fresh directory made by the first process of the run (pytest's, or
xdist's controller); its workers and every subprocess inherit it through the environment, and
the process that made it removes it when it exits. Set `JAX_COMPILATION_CACHE_DIR` to choose
another.
"""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='adapters_jax-test-xla-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')  # tiny programs too
  # At exit of this process only: not of its forks (mutmut runs each mutant in one), and not
  # between the several sessions one process may run.
  _owner = os.getpid()
  atexit.register(lambda: os.getpid() == _owner and shutil.rmtree(_cache, ignore_errors=True))


@pytest.fixture(scope='session')
def tiny_bert_dir(tmp_path_factory) -> str:
  """A tiny random BERT checkpoint with the packaged tokenizer (`tests.tiny_bert`), once per worker."""
  from tests.tiny_bert import write_tiny_bert
  return str(write_tiny_bert(tmp_path_factory.mktemp('tiny_bert')))

"""Shared test setup: keep XLA on the CPU and quiet, and share one XLA compilation cache.

The CLI tests start many processes that compile the same tiny programs; JAX's persistent
compilation cache lets each program compile once per test run (about a third of the suite's CPU
time). The cache lives in a fresh directory made by the first process of the run (pytest's, or
xdist's controller); its workers and every subprocess inherit it through the environment, and
the process that made it removes it at the end. Set `JAX_COMPILATION_CACHE_DIR` to choose another.
"""

import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix='adapters_jax-test-xla-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')  # tiny programs too


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)

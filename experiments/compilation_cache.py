r"""`--compilation_cache_dir`: JAX's persistent compilation cache, on by default for every entry point.

A restarted run (after preemption, a crash or Ctrl-C) reads its compiled train and eval steps from
this directory instead of compiling them again; so do later runs with the same shapes and a
predict call on a run already served once. The default is `$JAX_COMPILATION_CACHE_DIR` when set,
else `$XDG_CACHE_HOME/adapters_jax/xla` (`~/.cache/adapters_jax/xla`); an empty value turns the
cache off:

  python -m experiments.train --config=... --workdir=w --compilation_cache_dir=/scratch/xla
  python -m experiments.train --config=... --workdir=w --compilation_cache_dir=

Only programs that took at least `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` (JAX's default: one
second) to compile are written. A sweep hands its setting to the runs it starts (through the
environment, so Slurm jobs inherit it too). Entries are keyed by the program, the JAX version and
the device, so one directory may serve several projects and machines.
"""

import os
import sys

from absl import flags

ENVIRONMENT_VARIABLE = 'JAX_COMPILATION_CACHE_DIR'


def default_directory() -> str:
  """`$JAX_COMPILATION_CACHE_DIR` if set (even empty: off), else the user's cache folder."""
  if ENVIRONMENT_VARIABLE in os.environ:
    return os.environ[ENVIRONMENT_VARIABLE]
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache_home, 'adapters_jax', 'xla')


flags.DEFINE_string('compilation_cache_dir', default_directory(),
                    'JAX persistent compilation cache: a restarted run skips compiling (empty: off).')


def enable() -> str:
  """Points JAX at `--compilation_cache_dir` (and this process's children, through the
  environment). Call before the first jit compile. Returns the directory ('' when off)."""
  directory = os.path.abspath(os.path.expanduser(flags.FLAGS.compilation_cache_dir)) \
      if flags.FLAGS.compilation_cache_dir else ''
  os.environ[ENVIRONMENT_VARIABLE] = directory  # JAX reads it when imported; children inherit it
  if 'jax' in sys.modules:
    sys.modules['jax'].config.update('jax_compilation_cache_dir', directory or None)
  return directory

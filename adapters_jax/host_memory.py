"""Keep freed host memory in the process, so XLA:CPU stops paying page faults every step.

XLA:CPU allocates a step's temporaries as one block per execution (221 MB for a MiniLM-L6
Houlsby step at batch 8 x 128) and frees it afterwards. glibc serves blocks that large with
`mmap` and returns them with `munmap`, so every step faults in ~57,000 fresh zeroed pages: about
0.3 of the 2 cores' time went to the kernel (`os.times().system`) in a train step, measured in
docs/performance.md. With `reuse_freed_host_memory()` glibc keeps such blocks in its heap and
hands the same pages back next step.

It changes three glibc `mallopt` settings for the whole process, which is why the library never
calls it on import: only the entry points (`experiments/*.py`, `scripts/bench.py`) do, first
thing. Threads that already made their own malloc arena keep it, so call it before importing
TensorFlow or running anything in JAX. The same, for any program, from the environment:

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647

(`host_memory.GLIBC_TUNABLES`). The cost: freed memory is not given back to the OS while the
process runs (peak RSS stays), and all threads share one malloc arena.

It is applied only where JAX will compute on the CPU, the one backend where it was measured
(`jax_backend_is_cpu`), decided before JAX starts: `JAX_PLATFORMS` set -> its first entry is `cpu`
(JAX's default platform is the first one listed); unset -> no accelerator plugin is installed (no
module in the `jax_plugins` namespace, no `jax_plugins` entry point such as jax-cuda12-plugin's,
no `libtpu` package). On GPU and TPU hosts it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Mapping

# (glibc <malloc.h> mallopt() parameter, tunable name, value), applied by mallopt() at run time or
# read from GLIBC_TUNABLES at process start.
_SETTINGS = (
    (-8, 'arena_max', 1),                    # M_ARENA_MAX: every thread uses the main arena
    (-4, 'mmap_max', 0),                     # M_MMAP_MAX: large blocks come from the heap
    (-1, 'trim_threshold', 2**31 - 1),       # M_TRIM_THRESHOLD: the largest int; never trim
)
# The same settings as the environment variable glibc reads at process start.
GLIBC_TUNABLES = ':'.join(f'glibc.malloc.{name}={value}' for _, name, value in _SETTINGS)


def accelerator_plugins() -> list[str]:
  """The JAX accelerator plugins installed (found the way JAX finds them), without importing JAX."""
  found = {entry.name for entry in importlib.metadata.entry_points(group='jax_plugins')}
  try:
    namespace = importlib.util.find_spec('jax_plugins')
  except (ImportError, ValueError):
    namespace = None
  if namespace is not None and namespace.submodule_search_locations:
    found |= {name for _, name, _ in pkgutil.iter_modules(namespace.submodule_search_locations)}
  if importlib.util.find_spec('libtpu') is not None:
    found.add('libtpu')
  return sorted(found)


def jax_backend_is_cpu(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether JAX's default backend in this process will be the CPU (see the module docstring)."""
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip().lower() == 'cpu'
  return not accelerator_plugins()


def reuse_freed_host_memory() -> bool:
  """Makes glibc malloc keep and reuse freed blocks instead of unmapping them, on CPU backends.

  Returns True when the settings were applied; False where JAX will run on an accelerator
  (`jax_backend_is_cpu`) or the C library is not glibc (macOS, musl).
  """
  if not sys.platform.startswith('linux') or not jax_backend_is_cpu():
    return False
  libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  if not hasattr(libc, 'gnu_get_libc_version') or not hasattr(libc, 'mallopt'):
    return False
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all([libc.mallopt(param, value) == 1 for param, _, value in _SETTINGS])

"""`reuse_freed_host_memory` keeps large freed blocks for reuse (no fresh page faults)."""

import os
import subprocess
import sys

import pytest

from adapters_jax import host_memory

# In a fresh process: optionally apply the setting, then malloc/touch/free a 256 MiB block (far
# above glibc's largest mmap threshold, like XLA:CPU's per-step temporaries), malloc it again
# and count the minor page faults of touching it the second time.
_PROBE = r'''
import ctypes, resource, sys
from adapters_jax import host_memory
applied = host_memory.reuse_freed_host_memory() if sys.argv[1] == 'call' else None
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 256 << 20
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 2, size)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''
_PAGES = (256 << 20) // os.sysconf('SC_PAGE_SIZE')


def _second_touch_faults(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], capture_output=True, text=True,
                       check=True, env={**os.environ, **(env or {})}).stdout.split()
  return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_freed_blocks_are_reused_without_page_faults():
  applied, default_faults = _second_touch_faults('skip')
  assert applied == 'None'
  assert default_faults > _PAGES // 2  # glibc unmapped the block; every page faults again
  applied, faults = _second_touch_faults('call')
  assert applied == 'True'
  assert faults < _PAGES // 100
  # The documented environment variable does the same for any program.
  _, env_faults = _second_touch_faults('skip', {'GLIBC_TUNABLES': host_memory.GLIBC_TUNABLES})
  assert env_faults < _PAGES // 100

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


def _second_touch_faults(mode: str, env: dict[str, str] | None = None,
                         drop: tuple[str, ...] = ()) -> tuple[str, int]:
  environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], capture_output=True, text=True,
                       check=True, env=environ).stdout.split()
  return out[0], int(out[1])


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_applied_only_where_jax_computes_on_the_cpu(tmp_path):
  # Bug caught: applying it on GPU/TPU hosts (never measured there), or deciding from
  # JAX_PLATFORMS alone and missing an installed accelerator plugin.
  pythonpath = os.environ.get('PYTHONPATH', '')
  for platforms, applied in (('cpu', True), ('cpu,cuda', True), ('cuda', False), ('tpu,cpu', False)):
    result, faults = _second_touch_faults('call', {'JAX_PLATFORMS': platforms})
    assert result == str(applied), platforms
    assert (faults < _PAGES // 100) == applied, (platforms, faults)
  # JAX_PLATFORMS unset: this environment has no accelerator plugin, so JAX runs on the CPU.
  assert host_memory.accelerator_plugins() == []
  result, _ = _second_touch_faults('call', drop=('JAX_PLATFORMS',))
  assert result == 'True'
  # A plugin the way jax-cuda12-plugin installs one: a module in the jax_plugins namespace.
  namespaced = tmp_path / 'namespaced'
  (namespaced / 'jax_plugins' / 'xla_cuda12').mkdir(parents=True)
  (namespaced / 'jax_plugins' / 'xla_cuda12' / '__init__.py').write_text('')
  # ... or an entry point in the jax_plugins group of an installed distribution.
  advertised = tmp_path / 'advertised'
  info = advertised / 'fake_gpu_plugin-1.0.dist-info'
  info.mkdir(parents=True)
  (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: fake-gpu-plugin\nVersion: 1.0\n')
  (info / 'entry_points.txt').write_text('[jax_plugins]\nfake_gpu = fake_gpu_plugin\n')
  for folder in (namespaced, advertised):
    env = {'PYTHONPATH': os.pathsep.join(p for p in (str(folder), pythonpath) if p)}
    result, faults = _second_touch_faults('call', env, drop=('JAX_PLATFORMS',))
    assert result == 'False', folder
    assert faults > _PAGES // 2

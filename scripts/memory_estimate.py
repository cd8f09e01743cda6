r"""Memory of a compiled train step per layer option (`scan_layers`, `remat`), without running it.

    python scripts/memory_estimate.py --model large --batch 32 --length 128 --out memory.json

For each option the library's Houlsby train step (`scripts/bench.py`'s `build_method`; bfloat16
compute, float32 params) is lowered and compiled for the backend at hand, and XLA's buffer
assignment is read from `compiled.memory_analysis()`: `temp_bytes` (activations kept for the
backward pass plus scratch: what remat and scan change), `argument_bytes` (params, optimizer state,
batch) and `output_bytes`. On CPU this is XLA:CPU's assignment, an estimate of what a GPU needs
(GPU fusions differ); on a GPU it is the GPU's own. Nothing is executed, so BERT-large at the papers'
batch sizes fits in a CPU's memory.

`--model llama-7b` (or `llama-small`, `llama-tiny`) estimates a LoRA step (rank `--rank` on
query/value, next-token loss; `scripts/lm_steps.py`) of a Llama-shaped decoder instead, sharded
over a mesh by `--sharding` (`adapters_jax.train.sharding_rules`: data, fsdp, tp, fsdp+tp) with
the frozen base stored in `--frozen_dtype`. Its params are `jax.ShapeDtypeStruct`s carrying
their shardings, so no weight is materialised; `--fake_devices N` gives the CPU N devices (the
XLA flag `--xla_force_host_platform_device_count`). The numbers are then per device
(`per_device_bytes` = arguments + temp + outputs - aliased):

    python scripts/memory_estimate.py --model llama-7b --fake_devices 8 --sharding fsdp \
        --batch 8 --length 2048 --options scan+remat

`--quantize none,nf4` gives a LoRA row and a QLoRA row per option (`llama-7b`, `llama-3-8b`): the
frozen kernels and embedding tables stored as NF4 (or int4, int8) blocks of
`--quantize_block_size` values with `--frozen_dtype` scales, dequantised inside the step
(`adapters_jax.quantization`). `frozen_bytes` is the whole frozen base as stored (all devices);
`argument_bytes` holds each device's share of it:

    python scripts/memory_estimate.py --model llama-3-8b --fake_devices 8 --sharding fsdp \
        --batch 8 --length 2048 --options scan+remat --quantize none,nf4
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import pathlib
import time

_SCRIPTS = pathlib.Path(__file__).resolve().parent
OPTIONS = {'plain': (False, False), 'scan': (True, False), 'remat': (False, True),
           'scan+remat': (True, True)}


LLAMA_MODELS = ('llama-7b', 'llama-3-8b', 'llama-small', 'llama-tiny')
QUANTIZE = ('none', 'nf4', 'int4', 'int8')


def _script(name: str):
  spec = importlib.util.spec_from_file_location(f'{name}_script', _SCRIPTS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _bench():
  return _script('bench')


def _memory(compiled) -> dict:
  analysis = compiled.memory_analysis()
  out = {}
  for name in ('temp', 'argument', 'output', 'alias'):
    value = getattr(analysis, f'{name}_size_in_bytes', None) if analysis is not None else None
    out[f'{name}_bytes'] = None if value is None else int(value)
  return out


def estimate(model: str, batch: int, length: int, option: str, dtype: str) -> dict:
  """Compiles the Houlsby step with `option`'s layer settings; XLA's memory analysis in bytes."""
  bench = _bench()
  scan_layers, remat = OPTIONS[option]
  built = bench.build_method('houlsby', model, batch, length, scan_layers, remat,
                             config_overrides={'dtype': dtype})
  start = time.perf_counter()
  compiled = built['step'].lower(built['state'], built['frozen'], built['batch']).compile()
  compile_s = time.perf_counter() - start
  return {'option': option, 'model': model, 'batch': batch, 'length': length, 'dtype': dtype,
          'compile_s': round(compile_s, 1), **_memory(compiled)}


def _stored_bytes(tree) -> int:
  import jax
  import numpy as np
  return int(sum(np.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
                 for leaf in jax.tree.leaves(tree)))


def estimate_llama(model: str, batch: int, length: int, option: str, dtype: str,
                   frozen_dtype: str, sharding: str, model_parallelism: int, rank: int,
                   quantize: str = 'none', block_size: int = 64) -> dict:
  """Compiles a Llama LoRA (QLoRA with `quantize`) step from abstract sharded arrays; per-device
  memory in bytes."""
  import jax

  from adapters_jax.train import sharding_rules
  scan_layers, remat = OPTIONS[option]
  mesh = sharding_rules.make_mesh(jax.devices(), model_parallelism)
  start = time.perf_counter()
  built = _script('lm_steps').llama_adapter_step(
      model, batch, length, rank=rank, mesh=mesh, rules=sharding_rules.strategy_rules(sharding),
      frozen_dtype=sharding_rules.FROZEN_DTYPES[frozen_dtype], abstract=True, dtype=dtype,
      scan_layers=scan_layers, remat=remat, quantize='' if quantize == 'none' else quantize,
      block_size=block_size)
  compiled = built['step'].lower(built['state'], built['frozen'], built['batch']).compile()
  out = {'option': option, 'model': model, 'batch': batch, 'length': length, 'dtype': dtype,
         'frozen_dtype': frozen_dtype, 'quantize': quantize,
         'block_size': block_size if quantize != 'none' else None,
         'sharding': sharding, 'mesh': dict(mesh.shape),
         'frozen_bytes': _stored_bytes(built['frozen']),
         'trainable_params': built['counts'].trainable, 'total_params': built['counts'].total,
         'compile_s': round(time.perf_counter() - start, 1), **_memory(compiled)}
  if None not in (out['argument_bytes'], out['temp_bytes'], out['output_bytes'],
                  out['alias_bytes']):
    out['per_device_bytes'] = (out['argument_bytes'] + out['temp_bytes'] + out['output_bytes']
                               - out['alias_bytes'])
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='large',
                      choices=['tiny', 'minilm', 'large', *LLAMA_MODELS])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  parser.add_argument('--options', default=','.join(OPTIONS),
                      help=f'Comma-separated, from {", ".join(OPTIONS)}.')
  parser.add_argument('--out', default='', help='Also write the rows as JSON here.')
  llama = parser.add_argument_group('Llama LoRA steps (--model llama-*)')
  llama.add_argument('--sharding', default='fsdp', choices=['data', 'fsdp', 'tp', 'fsdp+tp'])
  llama.add_argument('--model_parallelism', type=int, default=1,
                     help='size of the mesh\'s model axis (tp, fsdp+tp)')
  llama.add_argument('--frozen_dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  llama.add_argument('--rank', type=int, default=8, help='LoRA rank')
  llama.add_argument('--quantize', default='none',
                     help=f'Comma-separated, from {", ".join(QUANTIZE)}: a row per frozen base '
                          '(none = LoRA, else QLoRA with that codec).')
  llama.add_argument('--quantize_block_size', type=int, default=64)
  llama.add_argument('--fake_devices', type=int, default=0,
                     help='give the CPU this many devices (0: the devices at hand)')
  args = parser.parse_args()
  if args.fake_devices:  # before JAX starts
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' '
                               f'--xla_force_host_platform_device_count={args.fake_devices}')
    os.environ['JAX_PLATFORMS'] = 'cpu'
  options = args.options.split(',')
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    parser.error(f'unknown option(s) {unknown}; valid: {", ".join(OPTIONS)}.')
  quantize = args.quantize.split(',')
  unknown = sorted(set(quantize) - set(QUANTIZE))
  if unknown:
    parser.error(f'unknown --quantize {unknown}; valid: {", ".join(QUANTIZE)}.')
  if quantize != ['none'] and args.model not in LLAMA_MODELS:
    parser.error(f'--quantize needs a Llama model ({", ".join(LLAMA_MODELS)}).')
  rows = []
  for option in options:
    for codec in quantize:
      if args.model in LLAMA_MODELS:
        rows.append(estimate_llama(args.model, args.batch, args.length, option, args.dtype,
                                   args.frozen_dtype, args.sharding, args.model_parallelism,
                                   args.rank, codec, args.quantize_block_size))
      else:
        rows.append(estimate(args.model, args.batch, args.length, option, args.dtype))
      gc.collect()
      print(json.dumps(rows[-1]), flush=True)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == '__main__':
  main()

r"""Memory of a compiled train step per layer option (`scan_layers`, `remat`), without running it.

    python scripts/memory_estimate.py --model large --batch 32 --length 128 --out memory.json

For each option the library's Houlsby train step (`scripts/bench.py`'s `build_method`; bfloat16
compute, float32 params) is lowered and compiled for the backend at hand, and XLA's buffer
assignment is read from `compiled.memory_analysis()`: `temp_bytes` (activations kept for the
backward pass plus scratch: what remat and scan change), `argument_bytes` (params, optimizer state,
batch) and `output_bytes`. On CPU this is XLA:CPU's assignment, an estimate of what a GPU needs
(GPU fusions differ); on a GPU it is the GPU's own. Nothing is executed, so BERT-large at the papers'
batch sizes fits in a CPU's memory.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import pathlib
import time

_SCRIPTS = pathlib.Path(__file__).resolve().parent
OPTIONS = {'plain': (False, False), 'scan': (True, False), 'remat': (False, True),
           'scan+remat': (True, True)}


def _bench():
  spec = importlib.util.spec_from_file_location('bench_script', _SCRIPTS / 'bench.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def estimate(model: str, batch: int, length: int, option: str, dtype: str) -> dict:
  """Compiles the Houlsby step with `option`'s layer settings; XLA's memory analysis in bytes."""
  bench = _bench()
  scan_layers, remat = OPTIONS[option]
  built = bench.build_method('houlsby', model, batch, length, scan_layers, remat,
                             config_overrides={'dtype': dtype})
  start = time.perf_counter()
  compiled = built['step'].lower(built['state'], built['frozen'], built['batch']).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  out = {'option': option, 'model': model, 'batch': batch, 'length': length, 'dtype': dtype,
         'compile_s': round(compile_s, 1)}
  for name in ('temp', 'argument', 'output', 'alias'):
    value = getattr(analysis, f'{name}_size_in_bytes', None) if analysis is not None else None
    out[f'{name}_bytes'] = None if value is None else int(value)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='large', choices=['tiny', 'minilm', 'large'])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  parser.add_argument('--options', default=','.join(OPTIONS),
                      help=f'Comma-separated, from {", ".join(OPTIONS)}.')
  parser.add_argument('--out', default='', help='Also write the rows as JSON here.')
  args = parser.parse_args()
  options = args.options.split(',')
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    parser.error(f'unknown option(s) {unknown}; valid: {", ".join(OPTIONS)}.')
  rows = []
  for option in options:
    rows.append(estimate(args.model, args.batch, args.length, option, args.dtype))
    gc.collect()
    print(json.dumps(rows[-1]), flush=True)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == '__main__':
  main()

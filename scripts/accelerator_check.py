r"""Accelerator check: BERT-large Houlsby bfloat16 training throughput, MFU and peak device memory,
a Llama-7B LoRA and QLoRA step, then one short GLUE task end to end; numbers as JSON.

    bash scripts/accelerator_check.sh results.json                  # GPU; GLUE RTE from tfds
    bash scripts/accelerator_check.sh results.json --glue_offline   # no network: GLUE-layout files
    python scripts/accelerator_check.py --tiny --out tiny.json      # CPU, seconds (the test's form)

Throughput: the library's real train step (`scripts/bench.py`'s `build_method`: splice, trainable
mask, AdamW, `train_step` jitted with the state donated, dropout on) for BERT-large dimensions
(24 x 1024, 16 heads; random weights: speed does not depend on them) with Houlsby adapters
(size 64, layer norms and head trained), bfloat16 compute and float32 params, batch 32 x length
128 (Houlsby et al.'s setting); the median of the timed steps after warm-up. With BERT's attention
dropout (0.1, the default) training attention is einsum attention differentiated by XLA (jax's
fused attention takes no dropout); `--attention_dropout=0` times the fused kernel instead.

FLOPs and MFU: `flops_per_step` is XLA's own count for the compiled step
(`compiled.cost_analysis()['flops']`); `mfu` = flops_per_step / step time / the device's peak
dense bfloat16 FLOP/s (`PEAK_BF16_TFLOPS` by device kind, or `--peak_tflops`). The step computes no
weight gradients of frozen matrices, so its FLOPs are about 4*N*tokens, not the 6*N*tokens of full
fine-tuning; `mfu_6n` gives the conventional 6*N*tokens figure (N = all parameters) beside it.
cuDNN's fused attention is a custom call whose FLOPs XLA may not count, so `mfu` is a lower bound
when it runs. Peak device memory: `jax.Device.memory_stats()['peak_bytes_in_use']` (None on CPU).

Llama (`--llama_methods lora,qlora`): `scripts/lm_steps.py`'s step on a Llama-2-7B shape (random
weights; `--llama_model`), LoRA r=8 on query/value, base stored bfloat16 or, for QLoRA, NF4 (blocks
of 64, bfloat16 scales, dequantised inside the step), bfloat16 compute, `scan_layers` + `remat`,
batch 4 x 2048 (`--llama_batch`, `--llama_length`); the same `--steps`/`--warmup`. Per method:
tokens/s, XLA's FLOPs and `mfu` as above (`mfu_6n` over all parameters), the compiled step's
argument/temp/output bytes (`compiled.memory_analysis()`), the device's `memory_stats()` after
it (its `peak_bytes_in_use` is the process's peak so far, random init included). A method that
fails (e.g. out of memory) records its error and the run goes on. `--tiny`: `llama-tiny`, 2 x 16.

GLUE: `experiments`' training loop (`train_and_evaluate`) on GLUE RTE (tfds; `--glue_data_dir` to
reuse a copy) with the packaged MiniLM-L6 (`--glue_model`) and Houlsby adapters, one epoch; with
`--glue_offline` (and always with `--tiny`) on the small GLUE-layout files of
`scripts/glue_files.py`, prepared by tfds's real GLUE builder; `--tiny` trains a tiny random BERT.
Time on one H100/H200: meant to stay under the wrapper's 8-minute limit (one BERT-large compile,
33 steps; two 7B inits and scanned compiles, 2 x 33 steps of ~8k tokens; one RTE epoch of ~80
MiniLM steps); not yet measured on one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

_SCRIPTS = pathlib.Path(__file__).resolve().parent
_ROOT = _SCRIPTS.parent
# Dense bfloat16 peak of one device, TFLOP/s (vendor datasheets, without sparsity).
PEAK_BF16_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L4': 121.0, 'A10G': 125.0,
                    'TPU v4': 275.0, 'TPU v5e': 197.0, 'TPU v5p': 459.0}


def _load_script(name: str):
  spec = importlib.util.spec_from_file_location(f'{name}_script', _SCRIPTS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def peak_tflops(device_kind: str, override: float | None) -> float | None:
  """The device's dense bfloat16 peak in TFLOP/s: `override`, else by device kind, else None."""
  if override:
    return override
  for kind, tflops in PEAK_BF16_TFLOPS.items():
    if kind.lower() in device_kind.lower():
      return tflops
  return None


def measure_training(model: str, batch: int, length: int, steps: int, warmup: int,
                     peak: float | None, attention_dropout: float) -> dict[str, Any]:
  """Compiles and times the Houlsby bfloat16 train step; FLOPs, MFU and device memory."""
  bench = _load_script('bench')
  built = bench.build_method('houlsby', model, batch, length,
                             config_overrides={'dtype': 'bfloat16',
                                               'attention_dropout': attention_dropout})
  compile_s = bench.compile_step(built)
  cost = built['compiled'].cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost['flops']) if cost and 'flops' in cost else None
  for _ in range(warmup):
    bench.run_step(built)
  times = [bench.run_step(built) for _ in range(steps)]
  step_s = statistics.median(times)
  tokens = batch * length
  params = built['counts'].total
  out = {
      'model': model, 'method': 'houlsby', 'dtype': 'bfloat16', 'batch': batch,
      'attention_dropout': attention_dropout,
      'length': length, 'steps': steps, 'compile_s': round(compile_s, 2),
      'step_s_median': step_s, 'examples_per_s': batch / step_s,
      'tokens_per_s': tokens / step_s, 'total_params': params,
      'trainable_params': built['counts'].trainable, 'flops_per_step': flops,
      'flops_source': 'compiled.cost_analysis()',
      'achieved_tflops': None if flops is None else flops / step_s / 1e12,
      'peak_tflops': peak, 'mfu': None, 'mfu_6n': None,
      'device_memory': bench.device_memory(),
      'loss_finite': bool(_finite(built)),
  }
  if peak:
    if flops is not None:
      out['mfu'] = flops / step_s / (peak * 1e12)
    out['mfu_6n'] = 6 * params * tokens / step_s / (peak * 1e12)
  return out


def measure_llama(method: str, shape: str, batch: int, length: int, steps: int, warmup: int,
                  peak: float | None) -> dict[str, Any]:
  """A Llama LoRA (`method` 'lora') or QLoRA ('qlora': NF4 base) step of `shape` (an
  `scripts/lm_steps.py` `LLAMA` key): base stored bfloat16 (QLoRA: NF4 codes, bfloat16 scales),
  bfloat16 compute, `scan_layers` + `remat`, rank 8 on query/value, next-token loss on
  `batch` x `length` tokens. Tokens/s, XLA's FLOPs and MFU, the step's own buffers
  (`compiled.memory_analysis()`) and the device's peak (`memory_stats()`, None on CPU)."""
  import jax
  import jax.numpy as jnp

  bench, lm_steps = _load_script('bench'), _load_script('lm_steps')
  built = lm_steps.llama_adapter_step(
      shape, batch, length, frozen_dtype=jnp.bfloat16, quantize='nf4' if method == 'qlora' else '',
      dtype='bfloat16', scan_layers=True, remat=True)
  compile_s = bench.compile_step(built)
  flops = scanned_step_flops(lm_steps, built['config'], batch, length, method)
  buffers = built['compiled'].memory_analysis()
  for _ in range(warmup):
    bench.run_step(built)
  step_s = statistics.median([bench.run_step(built) for _ in range(steps)])
  tokens, params = batch * length, built['counts'].total
  frozen_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(built['frozen']))
  out = {
      'model': shape, 'method': method, 'dtype': 'bfloat16', 'batch': batch, 'length': length,
      'steps': steps, 'compile_s': round(compile_s, 2), 'step_s_median': step_s,
      'tokens_per_s': tokens / step_s, 'total_params': params,
      'trainable_params': built['counts'].trainable, 'stored_base_bytes': frozen_bytes,
      'flops_per_step': flops,
      'flops_source': 'compiled.cost_analysis() of the unscanned step, 1 and 2 layers, extrapolated',
      'achieved_tflops': None if flops is None else flops / step_s / 1e12,
      'peak_tflops': peak, 'mfu': None, 'mfu_6n': None,
      'step_buffers': None if buffers is None else {
          name: int(getattr(buffers, f'{name}_size_in_bytes'))
          for name in ('argument', 'output', 'temp', 'alias')},
      'device_memory': bench.device_memory(),
      'loss_finite': bool(_finite(built)),
  }
  if peak:
    if flops is not None:
      out['mfu'] = flops / step_s / (peak * 1e12)
    out['mfu_6n'] = 6 * params * tokens / step_s / (peak * 1e12)
  return out


def _xla_flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def scanned_step_flops(lm_steps, config, batch: int, length: int, method: str) -> float | None:
  """XLA's FLOPs of the Llama step with `config.num_layers` layers.

  XLA's cost analysis counts a `while` loop's body once, so a `scan_layers` step's own count
  misses all layers but one. The same step, unscanned with 1 and with 2 layers, is compiled from
  abstract arrays (nothing materialised): layers = f(2) - f(1), the rest = f(1) - layer.
  """
  import jax.numpy as jnp

  counts = []
  for layers in (1, 2):
    built = lm_steps.llama_adapter_step(
        config.replace(num_layers=layers, scan_layers=False), batch, length, abstract=True,
        frozen_dtype=jnp.bfloat16, quantize='nf4' if method == 'qlora' else '')
    counts.append(_xla_flops(built['step'].lower(built['state'], built['frozen'],
                                                 built['batch']).compile()))
  if None in counts:
    return None
  return counts[0] + (config.num_layers - 1) * (counts[1] - counts[0])


def _finite(built) -> bool:
  import jax
  import jax.numpy as jnp
  leaves = jax.tree.leaves(built['state'].params)
  return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def write_tiny_bert(directory: str) -> str:
  """A 2-layer random BERT (hidden 32) as config.json + safetensors, with MiniLM's tokenizer."""
  import shutil

  import numpy as np
  from flax import traverse_util
  from safetensors.numpy import save_file
  from transformers import BertConfig, FlaxBertModel

  from adapters_jax.models import resolve_checkpoint_dir

  path = pathlib.Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  hf = FlaxBertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128), seed=0)
  hf.config.to_json_file(str(path / 'config.json'))
  tensors = {}
  for names, value in traverse_util.flatten_dict(hf.params).items():  # Flax -> PyTorch names
    value = np.asarray(value, np.float32)
    *prefix, leaf = names
    value = value.T if leaf == 'kernel' else value
    leaf = 'weight' if leaf in ('kernel', 'scale', 'embedding') else leaf
    tensors['.'.join([*prefix, leaf])] = np.ascontiguousarray(value)
  save_file(tensors, str(path / 'model.safetensors'), metadata={'format': 'pt'})
  minilm = resolve_checkpoint_dir('minilm-l6')
  for name in ('vocab.txt', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'):
    if (minilm / name).exists():
      shutil.copy(minilm / name, path / name)
  return str(path)


def run_glue(workdir: str, data_dir: str, model: str, tiny: bool) -> dict[str, Any]:
  """Houlsby adapters on GLUE RTE through the training loop, one epoch (`tiny`: 2 steps)."""
  from adapters_jax.train.loop import train_and_evaluate
  from experiments.configs import glue

  config = glue.get_config('rte')
  config.model = model
  config.data_dir = data_dir
  config.num_epochs = 1.0
  config.tensorboard = False
  config.eval_every_steps = config.checkpoint_every_steps = 1000
  if tiny:
    config.num_train_steps = 2
    config.batch_size = 4
    config.eval_batch_size = 8
    config.max_length = 32
    config.log_every_steps = 1
  start = time.perf_counter()
  result = train_and_evaluate(config, workdir)
  return {'task': result['task'], 'model': result['model'], 'method': result['method'],
          'train_steps': result['train_steps'],
          'validation_accuracy': result['validation_metrics']['validation']['accuracy'],
          'train_examples_per_second': result['train_examples_per_second'],
          'wall_s': time.perf_counter() - start, 'data_dir': data_dir}


def offline_glue_data_dir(root: str) -> str:
  """GLUE RTE prepared by tfds's builder from GLUE-layout files (`scripts/glue_files.py`)."""
  glue_files = _load_script('glue_files')
  files_dir = glue_files.write_glue_files(os.path.join(root, 'glue_files'), ['rte'])
  data_dir = os.path.join(root, 'tfds')
  glue_files.prepare_glue('rte', files_dir, data_dir)
  return data_dir


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='Where the JSON results go.')
  parser.add_argument('--tiny', action='store_true',
                      help='A tiny model, 2 x 16 tokens, 2 steps, offline GLUE: seconds on CPU.')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--steps', type=int, default=30, help='Timed steps after warm-up.')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--attention_dropout', type=float, default=0.1,
                      help='0 lets training attention take the fused kernel (cuDNN on a GPU).')
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='Peak dense bf16 TFLOP/s of the device (default: by device kind).')
  parser.add_argument('--glue_offline', action='store_true',
                      help='GLUE from scripts/glue_files.py files instead of the network.')
  parser.add_argument('--glue_data_dir', default='', help='tfds data_dir holding GLUE RTE.')
  parser.add_argument('--glue_model', default='minilm-l6',
                      help='Model of the GLUE run (with --tiny: a tiny random BERT).')
  parser.add_argument('--skip_glue', action='store_true')
  parser.add_argument('--llama_methods', default='lora,qlora',
                      help='Llama steps to measure after BERT-large: lora, qlora (empty: none).')
  parser.add_argument('--llama_model', default='llama-7b', help='a scripts/lm_steps.py LLAMA key')
  parser.add_argument('--llama_batch', type=int, default=4)
  parser.add_argument('--llama_length', type=int, default=2048)
  args = parser.parse_args(argv)

  import jax
  device = jax.devices()[0]
  results: dict[str, Any] = {
      'backend': jax.default_backend(), 'device_kind': device.device_kind,
      'device_count': jax.device_count(), 'jax_version': jax.__version__,
  }
  model, batch, length, steps, warmup = 'large', args.batch, args.length, args.steps, args.warmup
  if args.tiny:
    model, batch, length, steps, warmup = 'tiny', 2, 16, 2, 1
  peak = peak_tflops(device.device_kind, args.peak_tflops)
  results['training'] = measure_training(model, batch, length, steps, warmup, peak,
                                         args.attention_dropout)
  _write(args.out, results)  # what is measured so far survives a later failure
  if args.llama_methods:
    llama = (('llama-tiny', 2, 16, 2, 1) if args.tiny else
             (args.llama_model, args.llama_batch, args.llama_length, args.steps, args.warmup))
    results['llama'] = {}
    for method in args.llama_methods.split(','):
      try:
        results['llama'][method] = measure_llama(method, *llama, peak)
      except Exception as error:  # noqa: BLE001 - e.g. out of memory: record it, go on
        results['llama'][method] = {'error': f'{type(error).__name__}: {error}'[:2000]}
      _write(args.out, results)
  if not args.skip_glue:
    with tempfile.TemporaryDirectory() as tmp:
      data_dir = args.glue_data_dir
      if args.tiny or args.glue_offline:
        data_dir = offline_glue_data_dir(tmp)
      model = write_tiny_bert(os.path.join(tmp, 'tiny_bert')) if args.tiny else args.glue_model
      results['glue'] = run_glue(os.path.join(tmp, 'rte_houlsby'), data_dir, model, args.tiny)
      results['glue']['offline_files'] = bool(args.tiny or args.glue_offline)
  _write(args.out, results)
  print(json.dumps(results, indent=2))
  return results


def _write(path: str, results: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(results, f, indent=2)


if __name__ == '__main__':
  sys.path.insert(0, str(_ROOT))  # `experiments` and `adapters_jax` from this checkout
  main()

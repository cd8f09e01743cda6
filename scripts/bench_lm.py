"""Adapter train steps on our T5 and Llama against the PyTorch libraries, in one run, as ratios.

    # build the anchors' venv once: bash scripts/setup_anchor.sh
    .venv/bin/python scripts/bench_lm.py --models t5,llama --rounds 3 --steps 5 --out bench_lm.json
    # one model, some of its methods
    .venv/bin/python scripts/bench_lm.py --models llama --methods prefix_tuning,prompt_tuning

* `t5`: t5-small's shape (6+6 layers, d_model 512, 8 heads, FFN 2048, vocab 32128, dropout 0.1),
  random weights, seq2seq teacher forcing (`--batch` x `--seq` source tokens, `--target_seq`
  label tokens): Houlsby and Pfeiffer bottlenecks (ours vs AdapterHub `adapters`) and LoRA r=8 on
  query/value (ours vs `peft`).
* `llama`: a small GQA Llama (hidden 512, 8 layers, 8 heads, 2 key/value heads, FFN 1408, vocab
  32000), next-token loss on `--batch` x `--seq` tokens, all on query/value, ours vs `peft` on
  transformers' `LlamaForCausalLM`: LoRA r=8; QLoRA (ours: that LoRA on an NF4 base,
  `quantize='nf4'`, blocks of 64, float32 scales; theirs: on bitsandbytes' NF4 `Linear4bit`, or
  plain LoRA where bitsandbytes does not train, the anchor's `note` says which); DoRA r=8; VeRA
  r=256; prefix tuning (30 positions through a 512-wide MLP) and prompt tuning (10 vectors).

Our steps are `scripts/lm_steps.py`'s (the library's splice, trainable partition, AdamW and
`train_step`, jitted with the state donated), float32. Each round runs our methods in a fresh
worker process (stepping in turn), then `scripts/anchor_torch.py` in the anchors' environment on
the same shapes (2 threads), so machine load hits both sides alike; ratios ours/anchor are taken
per round and the median reported (`scripts/bench.py`'s table).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time
from typing import Any

_SCRIPTS = pathlib.Path(__file__).resolve().parent
# Our name -> (our shape in lm_steps, the anchor's --model, methods).
MODELS = {
    't5': ('t5-small', 't5-small', ('houlsby', 'pfeiffer', 'lora')),
    'llama': ('llama-small', 'llama-small', ('lora', 'qlora', 'dora', 'vera', 'prefix_tuning',
                                             'prompt_tuning')),
}
# Tiny shapes of the same architectures, for smoke tests of our side.
TINY = {'t5': 't5-tiny', 'llama': 'llama-tiny'}


def _script(name: str):
  spec = importlib.util.spec_from_file_location(f'{name}_script', _SCRIPTS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def build(model: str, method: str, shape: str, batch: int, seq: int,
          target_seq: int) -> dict[str, Any]:
  """Our step of `method` on `model` ('t5' or 'llama') at `shape` (an lm_steps shape name)."""
  lm = _script('lm_steps')
  if model == 't5':
    return lm.t5_adapter_step(method, shape, batch, seq, target_seq)
  if method == 'qlora':
    return lm.llama_adapter_step(shape, batch, seq, quantize='nf4')
  return lm.llama_adapter_step(shape, batch, seq, method=method,
                               rank=None if method == 'vera' else 8)


def time_ours(model: str, methods: list[str], shape: str, batch: int, seq: int, target_seq: int,
              steps: int, warmup: int) -> dict[str, Any]:
  """Builds and compiles every method, then steps them in turn; per method the step times."""
  import jax

  from adapters_jax.splicing import trainable
  built = {}
  for method in methods:
    b = built[method] = build(model, method, shape, batch, seq, target_seq)
    start = time.perf_counter()
    b['compiled'] = b['step'].lower(b['state'], b['frozen'], b['batch']).compile()
    b['compile_s'] = time.perf_counter() - start
  times: dict[str, list[float]] = {m: [] for m in methods}
  for i in range(warmup + steps):
    for method in methods:
      b = built[method]
      start = time.perf_counter()
      b['state'], metrics = b['compiled'](b['state'], b['frozen'], b['batch'])
      jax.block_until_ready(metrics)
      if i >= warmup:
        times[method].append(time.perf_counter() - start)
  return {m: {'step_s': times[m], 'compile_s': built[m]['compile_s'],
              'trainable_params': built[m]['counts'].trainable,
              'total_params': built[m]['counts'].total,
              'optimizer_state_bytes': trainable.tree_bytes(built[m]['state'].opt_state)}
          for m in methods}


def selected(model: str, methods: str) -> list[str]:
  """`model`'s methods, in their order, that the comma list `methods` names (all if empty)."""
  return [m for m in MODELS[model][2] if not methods or m in methods.split(',')]


def run_anchor(model: str, methods: list[str], args) -> dict[str, Any]:
  """`scripts/anchor_torch.py` on the same shapes; {method: {'ex_per_s', 'trainable', ...}}."""
  if not os.path.exists(args.anchor_python):
    raise FileNotFoundError(
        f'No anchor environment at {args.anchor_python}; build it with `bash '
        f'scripts/setup_anchor.sh {os.path.dirname(os.path.dirname(args.anchor_python))}`.')
  argv = [args.anchor_python, args.anchor_script, '--model', MODELS[model][1],
          '--batch', str(args.batch), '--seq', str(args.seq), '--target_seq',
          str(args.target_seq), '--steps', str(max(args.steps, 3)), '--threads', '2',
          '--methods', ','.join(methods)]
  return _script('bench')._run_json(argv)


def main(argv: list[str] | None = None) -> None:
  bench = _script('bench')
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='t5,llama', help=f'comma list of {sorted(MODELS)}')
  parser.add_argument('--methods', default='',
                      help='comma list: only these of each model\'s methods (default: all)')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seq', type=int, default=128, help='source (T5) or input (Llama) tokens')
  parser.add_argument('--target_seq', type=int, default=32, help='T5 label tokens')
  parser.add_argument('--steps', type=int, default=5, help='timed steps per round')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--anchor_python', default=bench.ANCHOR_PYTHON)
  parser.add_argument('--anchor_script', default=bench.ANCHOR_SCRIPT)
  parser.add_argument('--out', default=None, help='write the results as JSON here')
  parser.add_argument('--worker', default=None, choices=sorted(MODELS), help=argparse.SUPPRESS)
  parser.add_argument('--tiny', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  models = args.models.split(',')
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    parser.error(f'unknown models {unknown}; valid: {sorted(MODELS)}')

  def model_methods(model: str) -> list[str]:
    wanted = args.methods.split(',') if args.methods else MODELS[model][2]
    return [m for m in MODELS[model][2] if m in wanted]

  if args.worker:
    from adapters_jax.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory()  # as the experiment scripts and scripts/bench.py's workers
    shape = TINY[args.worker] if args.tiny else MODELS[args.worker][0]
    print(json.dumps(time_ours(args.worker, selected(args.worker, args.methods), shape, args.batch,
                               args.seq, args.target_seq, args.steps, args.warmup)))
    return

  report = {'args': vars(args), 'cpu_count': os.cpu_count(), 'load_average': os.getloadavg(),
            'results': {}}
  for model in models:
    methods = selected(model, args.methods)
    if not methods:  # none of the asked methods is in this model's benchmark
      continue
    rounds, anchors = [], []
    worker = [sys.executable, os.path.abspath(__file__), '--worker', model, '--batch',
              str(args.batch), '--seq', str(args.seq), '--target_seq', str(args.target_seq),
              '--steps', str(args.steps), '--warmup', str(args.warmup), '--methods', args.methods]
    for i in range(args.rounds):
      rounds.append(bench._run_json(worker))
      anchors.append(run_anchor(model, methods, args))
      print(json.dumps({'model': model, 'round': i, 'ours': rounds[-1], 'anchor': anchors[-1]}),
            file=sys.stderr, flush=True)  # progress: each round as it ends
    table = bench.summarise(rounds, anchors, args.batch, {})
    for method, row in table.items():
      row['anchor_trainable_params'] = anchors[0][method]['trainable']
      row['anchor_total_params'] = anchors[0][method]['total']
    for method, anchor in anchors[0].items():
      if 'note' in anchor:
        table[method]['anchor_note'] = anchor['note']
        print(f'{method} anchor: {anchor["note"]} ({anchor["base_linear"]} layers)', flush=True)
    report['results'][model] = table
    shape = (f'batch {args.batch} x source {args.seq} -> target {args.target_seq}'
             if model == 't5' else f'batch {args.batch} x length {args.seq}')
    print(bench.format_table(f'{MODELS[model][0]}, {shape}, float32 (ex/s: median step)', table),
          flush=True)
  report['load_average_after'] = os.getloadavg()
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()

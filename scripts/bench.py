"""Train-step benchmark of full fine-tuning and every adapter preset, optionally against PyTorch.

For one model size and one or more batch x length shapes, measures per method (`full` = every
leaf trains, then every preset in `adapters_jax.methods.PRESETS`): train-step throughput
(examples/s, median of the timed steps after warm-up), compile time, peak host RSS and device
memory, trainable parameters, optimizer-state bytes and adapter-checkpoint bytes. The step is the
library's real path: `models.build_model`, `splice.add_adapter`, `trainable.make_mask` /
`adapter_rules` / `split`, `optimizer.adamw`, `train.step.train_step` jitted with the state donated
(as `train/loop.py` does), dropout on (`deterministic=False`) with the model's own dropout rates.

Our methods run in one worker process per round, stepping in turn (method A one step, method B one
step, ...), so machine noise hits all of them alike. With `--anchors`, each round then runs
`scripts/anchor_torch.py` (adapter-hub `adapters` Houlsby/Pfeiffer/prefix tuning, `peft`
LoRA/prompt tuning, torch full fine-tuning; same shapes, 2 threads) in its own virtual
environment, so ours and theirs alternate; ratios ours/anchor are computed per round and the
median over rounds is reported.
Peak RSS and compile time come from a separate fresh process per method (`--no-memory` skips it),
so one method's memory does not hide another's.

    # MiniLM-L6 dims, both target shapes, anchors (build the venv once:
    #   bash scripts/setup_anchor.sh)
    .venv/bin/python scripts/bench.py --shapes 8x128,32x64 --anchors --rounds 2 --out bench.json
    # compile time of a BERT-large (24 x 1024) Houlsby step, scanned layers
    .venv/bin/python scripts/bench.py --model large --methods houlsby --scan_layers --steps 0
    # A/B in one process: `METHOD@all_positions` runs the last layer on every position (the
    # classification model's default computes position 0 only, the only one its head reads)
    .venv/bin/python scripts/bench.py --methods houlsby,houlsby@all_positions --no-memory

XLA CPU flags: none are needed; see docs/performance.md for the ones measured. Host memory: like
the experiment scripts, the workers first call `adapters_jax.host_memory.reuse_freed_host_memory()`
(glibc keeps XLA's per-step temporaries instead of unmapping them); `--host_memory=default` leaves
malloc alone, `--anchor_host_memory=reuse` gives the anchors the same setting (GLIBC_TUNABLES).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

MODELS = {
    'minilm': dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                   intermediate_size=1536),
    'large': dict(vocab_size=30522, hidden_size=1024, num_layers=24, num_heads=16,
                  intermediate_size=4096),
    'tiny': dict(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37),
}
NUM_LABELS = 2
# Our method name -> the anchor script's method name.
ANCHOR_METHODS = {'full': 'full', 'houlsby': 'houlsby', 'pfeiffer': 'pfeiffer', 'lora': 'lora',
                  'prefix_tuning': 'prefix_tuning', 'prompt_tuning': 'prompt_tuning'}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The PyTorch anchors' script is in scripts/; their venv (scripts/setup_anchor.sh) in .anchor-venv.
ANCHOR_SCRIPT = os.environ.get('ANCHOR_SCRIPT', os.path.join(_ROOT, 'scripts', 'anchor_torch.py'))
ANCHOR_PYTHON = os.environ.get('ANCHOR_PYTHON', os.path.join(_ROOT, '.anchor-venv', 'bin', 'python'))
ADAPTER_NAME = 'bench'
# `METHOD@VARIANT` benchmarks a variant of METHOD: `all_positions` runs the classification
# model's last layer on every position (its default computes position 0 only); `adapterdrop`
# leaves the lower half of the layers without adapters and without trained layer norms
# (AdapterDrop, Rueckle et al. 2021), so the backward pass stops at the middle of the stack.
VARIANTS = ('all_positions', 'adapterdrop')


def all_methods() -> list[str]:
  from adapters_jax.methods import PRESETS
  return ['full', *PRESETS]


def check_methods(methods: list[str]) -> list[str]:
  """The names in `methods` that are neither a method nor `METHOD@VARIANT`."""
  bad = []
  for method in methods:
    base, _, variant = method.partition('@')
    if base not in all_methods() or (variant and variant not in VARIANTS):
      bad.append(method)
  return sorted(bad)


def _all_positions_logits(module, input_ids, attention_mask, token_type_ids, deterministic):
  """The classification model's logits with the last layer run on every position."""
  features = module.head_features(input_ids, attention_mask, token_type_ids, deterministic,
                                  first_token_only=False)
  return module.classifier(features, deterministic)


def parse_shapes(text: str) -> list[tuple[int, int]]:
  """'8x128,32x64' -> [(8, 128), (32, 64)] (batch x length)."""
  shapes = []
  for part in text.split(','):
    try:
      batch, length = (int(v) for v in part.lower().split('x'))
    except ValueError:
      raise ValueError(f'Bad shape {part!r}; write BATCHxLENGTH, e.g. 8x128,32x64.') from None
    shapes.append((batch, length))
  return shapes


# ------------------------------------------------------------------------------------------------
# Our side: build one method's step the way the training loop does.


def make_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, Any]:
  """Random token ids, no padding (as the anchors), labels and example weights."""
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(seed)
  return {
      'input_ids': jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32),
      'attention_mask': jnp.ones((batch, length), jnp.int32),
      'token_type_ids': jnp.zeros((batch, length), jnp.int32),
      'labels': jnp.asarray(rng.integers(0, NUM_LABELS, (batch,)), jnp.int32),
      'example_mask': jnp.ones((batch,), jnp.float32),
  }


def build_method(method: str, model: str = 'minilm', batch: int = 8, length: int = 128,
                 scan_layers: bool = False, remat: bool = False,
                 config_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Model, spliced params, mask, optimizer, initial state and the jitted step for `method`.

  Returns a dict with `step` (jitted, state donated), `state`, `frozen`, `batch`, `spliced`,
  `params`, `mask`, `tx`, `name` (adapter name or None) and `counts`.
  """
  import jax
  import jax.numpy as jnp

  from adapters_jax import models
  from adapters_jax.methods import adapter_drop, get_method
  from adapters_jax.splicing import splice, trainable
  from adapters_jax.splicing.discovery import sample_ids
  from adapters_jax.train import optimizer
  from adapters_jax.train.step import classification_loss, create_train_state, train_step

  method, _, variant = method.partition('@')
  forward = _all_positions_logits if variant == 'all_positions' else None
  config = models.EncoderConfig(**MODELS[model], scan_layers=scan_layers, remat=remat,
                                **(config_overrides or {}))
  host = models.build_model(config, head='classification', num_labels=NUM_LABELS)
  sample = sample_ids()
  params = jax.jit(host.init)(jax.random.key(0), sample)['params']
  spliced, name = splice.Spliced(host), None
  if method == 'full':
    rules = [(r'.*', True)]
  else:
    name = ADAPTER_NAME
    method_config = get_method(method)
    if variant == 'adapterdrop':
      method_config = adapter_drop(method_config, range(config.num_layers // 2))
    spliced, params = splice.add_adapter(spliced, params, name, method_config,
                                         jax.random.key(1), sample, sample,
                                         jnp.zeros_like(sample), deterministic=True)
    rules = trainable.adapter_rules([spliced.adapter(name)], train_head=True)
  mask = trainable.make_mask(params, rules)
  train_params, frozen = trainable.split(params, mask)
  tx = optimizer.adamw(1e-4, weight_decay=0.01)
  state = create_train_state(train_params, tx, jax.random.key(2))

  def apply_fn(p, b, rng):
    return spliced.apply(p, b['input_ids'], b['attention_mask'], b['token_type_ids'],
                         deterministic=False, active=name, rngs={'dropout': rng},
                         method=forward)

  def loss_fn(output, b):
    return classification_loss(output, b['labels'], b['example_mask'])

  step = jax.jit(functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx),
                 donate_argnums=(0,))
  return {'step': step, 'state': state, 'frozen': frozen,
          'batch': make_batch(batch, length, config.vocab_size), 'spliced': spliced,
          'params': params, 'mask': mask, 'tx': tx, 'name': name,
          'counts': trainable.count(params, mask)}


def compile_step(built: dict[str, Any]) -> float:
  """Lowers and compiles the step for the built shapes; stores it in `built`; returns seconds."""
  start = time.perf_counter()
  built['compiled'] = built['step'].lower(built['state'], built['frozen'],
                                          built['batch']).compile()
  return time.perf_counter() - start


def run_step(built: dict[str, Any]) -> float:
  """One train step (compiled if `compile_step` ran); returns wall seconds to the result."""
  import jax
  step = built.get('compiled', built['step'])
  start = time.perf_counter()
  built['state'], metrics = step(built['state'], built['frozen'], built['batch'])
  jax.block_until_ready(metrics)
  return time.perf_counter() - start


def optimizer_state_bytes(built: dict[str, Any]) -> int:
  from adapters_jax.splicing import trainable
  return trainable.tree_bytes(built['state'].opt_state)


def checkpoint_bytes(built: dict[str, Any]) -> int:
  """Bytes on disk of the checkpoint `train/loop.py` would write for this method."""
  import jax

  from adapters_jax.checkpoint import save
  from adapters_jax.splicing import trainable
  params = trainable.combine(jax.device_get(built['state'].params),
                             jax.device_get(built['frozen']))
  with tempfile.TemporaryDirectory() as tmp:
    directory = os.path.join(tmp, 'ckpt')
    if built['name'] is None:
      save.save_trained(directory, params, built['mask'], base_name='bench')
    else:
      save.save_adapter(directory, built['spliced'], params, built['name'],
                              mask=built['mask'], base_name='bench')
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(directory) for f in files)


def peak_rss_bytes() -> int:
  """This process's RSS high-water mark (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_memory() -> dict[str, int] | None:
  """Peak/in-use bytes of the first device, where the backend reports them (not on CPU)."""
  import jax
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return {k: int(v) for k, v in stats.items() if k in ('peak_bytes_in_use', 'bytes_in_use',
                                                       'bytes_limit')}


def time_methods(methods: list[str], shape: tuple[int, int], args) -> dict[str, Any]:
  """Builds every method, then steps them in turn; returns per-method step times and facts."""
  batch, length = shape
  built = {}
  for method in methods:
    built[method] = build_method(method, args.model, batch, length, args.scan_layers,
                                 args.remat)
    built[method]['compile_s'] = compile_step(built[method])
  times: dict[str, list[float]] = {m: [] for m in methods}
  for i in range(args.warmup + args.steps):
    for method in methods:
      seconds = run_step(built[method])
      if i >= args.warmup:
        times[method].append(seconds)
  out = {}
  for method in methods:
    b = built[method]
    out[method] = {
        'step_s': times[method],
        'compile_s': b['compile_s'],
        'trainable_params': b['counts'].trainable,
        'total_params': b['counts'].total,
        'optimizer_state_bytes': optimizer_state_bytes(b),
    }
  return out


def measure_memory(method: str, shape: tuple[int, int], args) -> dict[str, Any]:
  """In a fresh process: compile time, peak RSS, device memory, checkpoint bytes of one method."""
  built = build_method(method, args.model, shape[0], shape[1], args.scan_layers, args.remat)
  compile_s = compile_step(built)
  for _ in range(min(2, args.warmup + args.steps)):
    run_step(built)
  return {'compile_s': compile_s, 'peak_rss_bytes': peak_rss_bytes(),
          'device_memory': device_memory(), 'checkpoint_bytes': checkpoint_bytes(built),
          'optimizer_state_bytes': optimizer_state_bytes(built)}


# ------------------------------------------------------------------------------------------------
# Orchestration: workers, anchors, rounds, table.


def _worker_argv(args, kind: str, methods: list[str], shape: tuple[int, int]) -> list[str]:
  argv = [sys.executable, os.path.abspath(__file__), '--worker', kind,
          '--methods', ','.join(methods), '--shapes', f'{shape[0]}x{shape[1]}',
          '--model', args.model, '--steps', str(args.steps), '--warmup', str(args.warmup),
          '--host_memory', args.host_memory]
  if args.scan_layers:
    argv.append('--scan_layers')
  if args.remat:
    argv.append('--remat')
  return argv


def _run_json(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
  """Runs a command and parses the last stdout line that is a JSON object."""
  proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f'{" ".join(argv[:4])} ... failed (exit {proc.returncode}):\n'
                       f'{proc.stderr[-3000:]}')
  return json.loads(lines[-1])


def run_anchor(methods: list[str], shape: tuple[int, int], args) -> dict[str, Any]:
  """The PyTorch anchors for `methods` (our names) on `shape`; {our name: {'step_s', ...}}."""
  theirs = [ANCHOR_METHODS[m] for m in methods if m in ANCHOR_METHODS]
  if not theirs:
    return {}
  if not os.path.exists(args.anchor_python):
    raise FileNotFoundError(
        f'No anchor environment at {args.anchor_python}; build it with `bash '
        f'scripts/setup_anchor.sh {os.path.dirname(os.path.dirname(args.anchor_python))}`.')
  argv = [args.anchor_python, args.anchor_script, '--model', 'minilm', '--batch', str(shape[0]),
          '--seq', str(shape[1]), '--steps', str(max(args.steps, 3)), '--threads', '2',
          '--methods', ','.join(theirs)]
  env = None
  if args.anchor_host_memory == 'reuse':
    from adapters_jax.host_memory import GLIBC_TUNABLES
    env = {**os.environ, 'GLIBC_TUNABLES': GLIBC_TUNABLES}
  result = _run_json(argv, env=env)
  reverse = {v: k for k, v in ANCHOR_METHODS.items()}
  return {reverse[k]: v for k, v in result.items()}


def summarise(rounds: list[dict[str, Any]], anchors: list[dict[str, Any]], batch: int,
              memory: dict[str, Any]) -> dict[str, Any]:
  """Per method: median ex/s over all timed steps of all rounds, anchor medians and ratios."""
  methods = list(rounds[0])
  table = {}
  for method in methods:
    steps = [s for r in rounds for s in r[method]['step_s']]
    first = rounds[0][method]
    row = {
        'examples_per_s': batch / statistics.median(steps),
        'step_ms': 1000 * statistics.median(steps),
        'per_round_examples_per_s': [batch / statistics.median(r[method]['step_s'])
                                     for r in rounds],
        'compile_s': first['compile_s'],
        'trainable_params': first['trainable_params'],
        'total_params': first['total_params'],
        'optimizer_state_bytes': first['optimizer_state_bytes'],
    }
    row.update(memory.get(method, {}))
    if 'compile_s' in memory.get(method, {}):
      row['compile_s'] = memory[method]['compile_s']  # measured in a fresh process
    theirs = [a[method]['ex_per_s'] for a in anchors if method in a]
    if theirs:
      ours = row['per_round_examples_per_s']
      row['anchor_examples_per_s'] = statistics.median(theirs)
      row['ratio_ours_over_anchor'] = statistics.median(
          o / t for o, t in zip(ours, theirs, strict=True))
    table[method] = row
  if 'full' in table:
    full_ms = table['full']['step_ms']
    for row in table.values():
      row['step_time_over_full'] = row['step_ms'] / full_ms
  return table


def format_table(title: str, table: dict[str, Any]) -> str:
  head = (f'{"method":<22}{"ex/s":>8}{"step ms":>9}{"/full":>7}{"anchor":>8}{"ratio":>7}'
          f'{"compile s":>10}{"trainable":>12}{"opt MiB":>9}{"ckpt MiB":>9}{"RSS MiB":>9}')
  lines = [title, head, '-' * len(head)]
  mib = lambda v: f'{v / 2**20:9.2f}' if v is not None else f'{"-":>9}'
  for method, r in table.items():
    anchor = f'{r["anchor_examples_per_s"]:8.1f}' if 'anchor_examples_per_s' in r else f'{"-":>8}'
    ratio = f'{r["ratio_ours_over_anchor"]:7.2f}' if 'ratio_ours_over_anchor' in r else f'{"-":>7}'
    rel = f'{r["step_time_over_full"]:7.2f}' if 'step_time_over_full' in r else f'{"-":>7}'
    lines.append(
        f'{method:<22}{r["examples_per_s"]:8.1f}{r["step_ms"]:9.0f}{rel}{anchor}{ratio}'
        f'{r["compile_s"]:10.1f}{r["trainable_params"]:12,}{mib(r["optimizer_state_bytes"])}'
        f'{mib(r.get("checkpoint_bytes"))}{mib(r.get("peak_rss_bytes"))}')
  return '\n'.join(lines)


def bench_shape(shape: tuple[int, int], methods: list[str], args) -> dict[str, Any]:
  memory = {}
  if args.memory:
    for method in methods:
      memory[method] = _run_json(_worker_argv(args, 'memory', [method], shape))[method]
  rounds, anchors = [], []
  if args.steps > 0:
    for _ in range(args.rounds):
      rounds.append(_run_json(_worker_argv(args, 'time', methods, shape)))
      if args.anchors:
        anchors.append(run_anchor(methods, shape, args))
  if not rounds:  # compile/memory only
    return {m: memory[m] for m in methods}
  return summarise(rounds, anchors, shape[0], memory)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='minilm', choices=sorted(MODELS))
  parser.add_argument('--shapes', default='8x128', help='BATCHxLENGTH list, e.g. 8x128,32x64')
  parser.add_argument('--methods', default='all', help="comma list of 'full' and presets")
  parser.add_argument('--steps', type=int, default=10, help='timed steps per round (0: none)')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=1,
                      help='ours then anchors, this many times; medians over rounds')
  parser.add_argument('--anchors', action='store_true', help='also run the PyTorch anchors')
  parser.add_argument('--anchor_python', default=ANCHOR_PYTHON)
  parser.add_argument('--anchor_script', default=ANCHOR_SCRIPT)
  parser.add_argument('--no-memory', dest='memory', action='store_false',
                      help='skip the per-method fresh-process memory/compile/checkpoint pass')
  parser.add_argument('--scan_layers', action='store_true')
  parser.add_argument('--remat', action='store_true')
  parser.add_argument('--out', default=None, help='write the results as JSON here')
  parser.add_argument('--host_memory', choices=['reuse', 'default'], default='reuse',
                      help='reuse: keep freed host memory in our workers (as the experiment '
                      'scripts do); default: glibc as configured')
  parser.add_argument('--anchor_host_memory', choices=['reuse', 'default'], default='default',
                      help='reuse: the same glibc setting for the PyTorch anchors')
  parser.add_argument('--worker', choices=['time', 'memory'], default=None,
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  methods = all_methods() if args.methods == 'all' else args.methods.split(',')
  unknown = check_methods(methods)
  if unknown:
    parser.error(f'unknown methods {unknown}; valid: {all_methods()}, each optionally with '
                 f'@VARIANT, VARIANT in {list(VARIANTS)}')
  if args.anchors and args.model != 'minilm':
    parser.error('the anchors exist for --model minilm only')
  shapes = parse_shapes(args.shapes)

  if args.worker and args.host_memory == 'reuse':
    from adapters_jax.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts its threads
  if args.worker == 'time':
    print(json.dumps(time_methods(methods, shapes[0], args)))
    return
  if args.worker == 'memory':
    print(json.dumps({methods[0]: measure_memory(methods[0], shapes[0], args)}))
    return

  import jax
  report = {'args': vars(args), 'device': str(jax.devices()[0]),
            'jax_version': jax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'cpu_count': os.cpu_count(), 'results': {}}
  for shape in shapes:
    table = bench_shape(shape, methods, args)
    key = f'{shape[0]}x{shape[1]}'
    report['results'][key] = table
    if args.steps > 0:
      print(format_table(f'{args.model}, batch {shape[0]} x length {shape[1]}, float32, '
                         f'{report["device"]}  (ex/s: median step)', table), flush=True)
    else:
      for method, row in table.items():
        print(f'{args.model} {key} {method}: compile {row["compile_s"]:.1f} s, peak RSS '
              f'{row["peak_rss_bytes"] / 2**20:.0f} MiB, optimizer state '
              f'{row["optimizer_state_bytes"] / 2**20:.2f} MiB, checkpoint '
              f'{row["checkpoint_bytes"] / 2**20:.2f} MiB', flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()

r"""Benchmarks a grid row trained as one vmapped program against the same runs one after another.

  python scripts/bench_vmap.py --members=8 --steps=10 --batch_size=8 --length=64 --out=bench_vmap.json

The row: Houlsby adapters on the packaged MiniLM-L6 and Rotten Tomatoes, `--members` runs that
differ in learning rate (1e-4, 3e-4, 1e-3, 3e-3, ...) and seed (0, 1, ...), each `--steps` steps of
`--batch_size` at `--length` tokens, one validation pass at the end. Both ways train through the
real entry points in this process: `train.vmapped.train_group` (one program) and
`train.loop.train_and_evaluate` per run. A row's wall time counts everything a run does (model
load, compile, training, evaluation, checkpoints, result files) but the interpreter start, which
a separate run process would add. Member-examples/s is `members x steps x batch` over that wall
time; the steady-state numbers leave compilation and evaluation out (each run's
`train_examples_per_second`, summed over the members). The machines are noisy: compare within one
run.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_integer('members', 8, 'Runs in the row.')
flags.DEFINE_integer('steps', 10, 'Training steps per run.')
flags.DEFINE_integer('batch_size', 8, 'Examples per step of one run.')
flags.DEFINE_integer('length', 64, 'Maximum sequence length (the longest bucket).')
flags.DEFINE_integer('eval_examples', 64, 'Validation (and test) examples evaluated at the end.')
flags.DEFINE_string('out', '', 'Write the numbers as JSON here.')
FLAGS = flags.FLAGS

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)


def row_configs():
  from experiments.configs import quickstart

  configs = []
  for seed, learning_rate in itertools.islice(
      ((s, lr) for s in itertools.count() for lr in LEARNING_RATES), FLAGS.members):
    config = quickstart.get_config()
    config.update({
        'learning_rate': learning_rate, 'seed': seed, 'max_length': FLAGS.length,
        'batch_size': FLAGS.batch_size, 'num_train_steps': FLAGS.steps,
        'max_train_examples': FLAGS.batch_size * FLAGS.steps * 4,
        'max_eval_examples': FLAGS.eval_examples, 'eval_batch_size': 32,
        'eval_every_steps': FLAGS.steps, 'checkpoint_every_steps': FLAGS.steps,
        'log_every_steps': FLAGS.steps, 'tensorboard': False})
    configs.append(config)
  return configs


def main(argv):
  del argv
  from absl import logging

  from adapters_jax.host_memory import reuse_freed_host_memory

  reuse_freed_host_memory()
  logging.set_verbosity(logging.WARNING)
  import jax

  from adapters_jax.train import loop, vmapped

  configs = row_configs()
  root = tempfile.mkdtemp(prefix='bench_vmap_')
  start = time.perf_counter()
  grouped = vmapped.train_group(configs, [os.path.join(root, f'vmap_{i}') for i in range(len(configs))])
  vmap_seconds = time.perf_counter() - start
  start = time.perf_counter()
  print(f'vmapped row of {len(configs)}: {vmap_seconds:.1f} s', flush=True)
  alone, run_seconds = [], []
  for i, config in enumerate(configs):
    run_start = time.perf_counter()
    alone.append(loop.train_and_evaluate(config, os.path.join(root, f'alone_{i}')))
    run_seconds.append(time.perf_counter() - run_start)
    print(f'separate run {i}: {run_seconds[-1]:.1f} s', flush=True)
  sequential_seconds = time.perf_counter() - start

  member_examples = len(configs) * FLAGS.steps * FLAGS.batch_size
  numbers = {
      'members': len(configs), 'steps': FLAGS.steps, 'batch_size': FLAGS.batch_size,
      'length': FLAGS.length, 'device': str(jax.devices()[0].device_kind),
      'vmapped_row_seconds': round(vmap_seconds, 1),
      'sequential_row_seconds': round(sequential_seconds, 1),
      'separate_run_seconds': [round(t, 1) for t in run_seconds],
      'vmapped_member_examples_per_second': round(member_examples / vmap_seconds, 1),
      'sequential_member_examples_per_second': round(member_examples / sequential_seconds, 1),
      'row_speedup': round(sequential_seconds / vmap_seconds, 2),
      'vmapped_steady_member_examples_per_second': round(
          sum(r['train_examples_per_second'] for r in grouped), 1),
      'sequential_steady_examples_per_second': round(
          sum(r['train_examples_per_second'] for r in alone) / len(alone), 1),
      'validation_accuracy_vmapped': [round(r['validation_metrics']['validation']['accuracy'], 4)
                                      for r in grouped],
      'validation_accuracy_sequential': [round(r['validation_metrics']['validation']['accuracy'], 4)
                                         for r in alone],
  }
  print(json.dumps(numbers, indent=2))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(numbers, f, indent=2)


if __name__ == '__main__':
  app.run(main)

r"""Benchmarks composition at inference: a mixed batch vs each adapter's rows separately, Parallel,
and AdapterDrop (speed gained and accuracy lost) on the packaged MiniLM-L6.

  python scripts/bench_composition.py \
      --adapters=workdirs/mini_fusion/adapter-rotten_tomatoes,workdirs/mini_fusion/adapter-tweet_sentiment \
      --batch_size=32 --length=64 --eval_examples=512 --out=docs/results/fusion_bench.json

The adapters are two trained workdirs (defaults: the mini_fusion ones). AdapterDrop accuracy is
measured on the first adapter's task (validation subset), dropping adapters from the first k of
the 6 layers. Times are medians of `--repeats` jitted calls after a warm-up, on this machine's CPU;
compare within one run (the machines are shared and noisy).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_string('adapters', 'workdirs/mini_fusion/adapter-rotten_tomatoes,'
                    'workdirs/mini_fusion/adapter-tweet_sentiment', 'Comma-separated workdirs.')
flags.DEFINE_integer('batch_size', 32, 'Rows per mixed batch (half per adapter).')
flags.DEFINE_integer('length', 64, 'Sequence length.')
flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement.')
flags.DEFINE_integer('eval_examples', 512, 'Validation examples for the AdapterDrop accuracy.')
flags.DEFINE_string('out', '', 'Write the numbers as JSON here.')
FLAGS = flags.FLAGS


def _time(fn, *args, repeats: int) -> float:
  import jax

  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from adapters_jax import data
  from adapters_jax.predict.serving import head_features, load_adapter_server
  from adapters_jax.splicing.composition import Parallel, PerExample

  server = load_adapter_server(FLAGS.adapters.split(','), batch_size=FLAGS.batch_size)
  spliced, params, names = server.spliced, server.params, server.names
  a, b = names[:2]
  batch, length = FLAGS.batch_size, FLAGS.length
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1000, 20000, (batch, length)), jnp.int32)
  mask = jnp.ones_like(ids)
  types = jnp.zeros_like(ids)
  half = batch // 2

  single = jax.jit(lambda p, i, m, t, name: spliced.apply(p, i, m, t, active=name),
                   static_argnums=(4,))
  branches = PerExample(a, b)
  mixed = jax.jit(lambda p, i, m, t, idx: spliced.apply(p, i, m, t, active=branches,
                                                         adapter_index=idx))
  parallel = jax.jit(lambda p, i, m, t: spliced.apply(p, i, m, t, active=Parallel(a, b)))
  base = jax.jit(lambda p, i, m, t: spliced.apply(p, i, m, t))
  index = jnp.asarray([0] * half + [1] * (batch - half), jnp.int32)
  r = FLAGS.repeats
  results = {'batch_size': batch, 'length': length, 'adapters': list(names[:2]),
             'date': time.strftime('%Y-%m-%d'), 'device': jax.devices()[0].device_kind}
  t_mixed = _time(mixed, params, ids, mask, types, index, repeats=r)
  t_sep = (_time(single, params, ids[:half], mask[:half], types[:half], a, repeats=r)
           + _time(single, params, ids[half:], mask[half:], types[half:], b, repeats=r))
  t_one = _time(single, params, ids, mask, types, a, repeats=r)
  t_base = _time(base, params, ids, mask, types, repeats=r)
  t_par = _time(parallel, params, ids[:half], mask[:half], types[:half], repeats=r)
  results['seconds'] = {
      'base_full_batch': t_base, 'one_adapter_full_batch': t_one,
      'mixed_batch_per_example': t_mixed, 'separate_runs_per_adapter_sum': t_sep,
      'parallel_two_adapters_half_batch': t_par}
  results['mixed_over_separate'] = t_mixed / t_sep

  # AdapterDrop: speed and accuracy on the first adapter's task.
  spec = server.heads[a].kind.spec
  task = data.load_task(spec.name)
  examples = task[spec.validation_splits[0]][:FLAGS.eval_examples]
  encoded = data.encode(examples, server.tokenizer, server.heads[a].max_length)
  drop = {}
  for k in (0, 1, 2, 3, 4, 5, 6):
    fn = jax.jit(lambda p, i, m, t, k=k: spliced.apply(p, i, m, t, active=a, skip_layers=k,
                                                       method=head_features))
    seconds = _time(fn, params, ids, mask, types, repeats=r)
    correct = 0
    for eval_batch in data.eval_batches(encoded, batch):
      feats = fn(params, eval_batch['input_ids'], eval_batch['attention_mask'],
                 eval_batch['token_type_ids'])
      logits = server.head_logits(a, np.asarray(feats))
      keep = eval_batch['example_mask'] > 0
      correct += int((logits.argmax(-1)[keep] == eval_batch['labels'][keep]).sum())
    drop[k] = {'seconds': seconds, 'speedup': None, 'accuracy': correct / len(encoded)}
  for k in drop:
    drop[k]['speedup'] = drop[0]['seconds'] / drop[k]['seconds']
  results['adapter_drop'] = {'task': spec.name, 'examples': len(encoded), 'by_k': drop}
  text = json.dumps(results, indent=2)
  print(text)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  app.run(main)

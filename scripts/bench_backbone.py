"""Throughput of our BERT vs transformers' FlaxBertForSequenceClassificationModule, one run.

Forward (deterministic) and full fine-tuning train step (AdamW, softmax cross-entropy, dropout
on) at MiniLM-L6 dims with random weights; the two models alternate step by step so machine
noise hits both. Reports the median examples/s over the timed steps and our/HF ratios.

    # after `make setup` (editable install); otherwise prefix PYTHONPATH=.
    .venv/bin/python scripts/bench_backbone.py --steps 10 --out /tmp/bench_backbone.json
    .venv/bin/python scripts/bench_backbone.py --steps 0 --compile_large --remat --scan_layers

`--compile_large` also measures the compile time of a BERT-large (24 x 1024) train step of our
model: full fine-tuning, plus the `--remat` / `--scan_layers` variants when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
import transformers
from transformers.models.bert.modeling_flax_bert import FlaxBertForSequenceClassificationModule

from adapters_jax.models import EncoderConfig, classification_model

MINILM = dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
              intermediate_size=1536)
LARGE = dict(vocab_size=30522, hidden_size=1024, num_layers=24, num_heads=16,
             intermediate_size=4096)
NUM_LABELS = 2


def _hf_config(cfg: EncoderConfig) -> transformers.BertConfig:
  return transformers.BertConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act,
      hidden_dropout_prob=cfg.hidden_dropout,
      attention_probs_dropout_prob=cfg.attention_dropout, num_labels=NUM_LABELS)


def _models(cfg: EncoderConfig):
  """name -> (init(key, ids) -> params, apply(params, batch, rng, deterministic) -> logits)."""
  ours = classification_model(cfg, NUM_LABELS)
  hf = FlaxBertForSequenceClassificationModule(_hf_config(cfg), dtype=cfg.compute_dtype)

  def ours_apply(params, batch, rng, deterministic):
    return ours.apply({'params': params}, batch['input_ids'], batch['attention_mask'],
                      batch['token_type_ids'], deterministic=deterministic,
                      rngs={'dropout': rng})

  def hf_apply(params, batch, rng, deterministic):
    ids = batch['input_ids']
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return hf.apply({'params': params}, ids, batch['attention_mask'],
                    batch['token_type_ids'], positions, None, deterministic=deterministic,
                    rngs={'dropout': rng}).logits

  return {
      'ours': (lambda key, ids: ours.init(key, ids)['params'], ours_apply),
      'flax_bert': (lambda key, ids: hf.init(
          key, ids, ids, ids, ids, None)['params'], hf_apply),
  }


def _batch(batch_size: int, length: int, vocab: int):
  key = jax.random.key(1)
  ids = jax.random.randint(key, (batch_size, length), 0, vocab, jnp.int32)
  lengths = jnp.linspace(length // 2, length, batch_size).astype(jnp.int32)
  mask = (jnp.arange(length)[None] < lengths[:, None]).astype(jnp.int32)
  return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': jnp.zeros_like(ids),
          'labels': jnp.arange(batch_size) % NUM_LABELS}


def _train_step(apply, tx):
  def step(params, opt_state, batch, rng):
    def loss_fn(p):
      logits = apply(p, batch, rng, False)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['labels']).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def bench_throughput(cfg: EncoderConfig, batch_size: int, length: int, steps: int,
                     warmup: int) -> dict:
  batch = _batch(batch_size, length, cfg.vocab_size)
  tx = optax.adamw(2e-5, weight_decay=0.01)
  runners = {}
  for name, (init, apply) in _models(cfg).items():
    params = jax.jit(init)(jax.random.key(0), batch['input_ids'])
    forward = jax.jit(lambda p, b, apply=apply: apply(p, b, jax.random.key(0), True))
    train = jax.jit(_train_step(apply, tx), donate_argnums=(0, 1))
    runners[name] = {'params': params, 'opt': tx.init(params), 'forward': forward,
                     'train': train, 'times': {'forward': [], 'train': []}}
  for i in range(warmup + steps):
    for r in runners.values():  # alternate the models step by step
      start = time.perf_counter()
      r['forward'](r['params'], batch).block_until_ready()
      t_fwd = time.perf_counter() - start
      start = time.perf_counter()
      r['params'], r['opt'], loss = r['train'](r['params'], r['opt'], batch,
                                               jax.random.key(i))
      loss.block_until_ready()
      t_train = time.perf_counter() - start
      if i >= warmup:
        r['times']['forward'].append(t_fwd)
        r['times']['train'].append(t_train)
  results = {}
  for name, r in runners.items():
    results[name] = {kind: batch_size / statistics.median(ts) for kind, ts in r['times'].items()}
  results['ratio_ours_over_flax_bert'] = {
      kind: results['ours'][kind] / results['flax_bert'][kind] for kind in ('forward', 'train')}
  return results


def compile_time(cfg: EncoderConfig, batch_size: int, length: int) -> float:
  """Seconds to lower + compile one train step from abstract shapes (no weights materialised)."""
  init, apply = _models(cfg)['ours']
  batch = jax.eval_shape(lambda: _batch(batch_size, length, cfg.vocab_size))
  tx = optax.adamw(2e-5, weight_decay=0.01)
  params = jax.eval_shape(init, jax.random.key(0), batch['input_ids'])
  opt_state = jax.eval_shape(tx.init, params)
  start = time.perf_counter()
  jax.jit(_train_step(apply, tx)).lower(
      params, opt_state, batch, jax.random.key(0)).compile()
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10, help='timed steps (0: skip)')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--attention_dropout', type=float, default=0.1,
                      help='0.0 lets our model use jax.nn.dot_product_attention in training')
  parser.add_argument('--hidden_act', default='gelu')
  parser.add_argument('--compile_large', action='store_true')
  parser.add_argument('--remat', action='store_true', help='with --compile_large')
  parser.add_argument('--scan_layers', action='store_true', help='with --compile_large')
  parser.add_argument('--out', default=None, help='write the results as JSON here')
  args = parser.parse_args()

  common = dict(dtype=args.dtype, attention_dropout=args.attention_dropout,
                hidden_act=args.hidden_act)
  report = {'args': vars(args), 'device': str(jax.devices()[0])}
  if args.steps:
    cfg = EncoderConfig(**MINILM, **common)
    report['throughput'] = bench_throughput(cfg, args.batch, args.length, args.steps,
                                            args.warmup)
    t = report['throughput']
    print(f"MiniLM-L6 dims, batch {args.batch} x {args.length}, {args.dtype}, "
          f"attention_dropout {args.attention_dropout}  (examples/s, median)")
    print(f"{'model':<12}{'forward':>12}{'train':>12}")
    for name in ('ours', 'flax_bert', 'ratio_ours_over_flax_bert'):
      print(f"{name:<12}{t[name]['forward']:>12.2f}{t[name]['train']:>12.2f}")
  if args.compile_large:
    variants = {'full_ft': {}}
    if args.remat:
      variants['remat'] = {'remat': True}
    if args.scan_layers:
      variants['scan'] = {'scan_layers': True}
    if args.remat and args.scan_layers:
      variants['scan_remat'] = {'scan_layers': True, 'remat': True}
    report['compile_large_s'] = {
        name: compile_time(EncoderConfig(**LARGE, **common, **v), args.batch, args.length)
        for name, v in variants.items()}
    print('BERT-large (24 x 1024) train-step compile time, seconds:')
    for name, seconds in report['compile_large_s'].items():
      print(f'  {name:<12}{seconds:8.1f}')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()

"""Train-step speed of one BERT in Linen (ours, `models.bert`) and in NNX, with the same LoRA, as
the run engine steps them: the ratio of their step times.

The NNX model is a twin of `BertForSequenceClassification` built from flax's NNX layers
(`nnx.Embed`, `nnx.Linear`, `nnx.LayerNorm`, `nnx.Dropout`) at the Linen module paths, so the LoRA
preset's sites match both and the Linen weights (adapter included) copy over; the script first
checks that both give the same logits in evaluation. Both steps are `train.step.train_step` over
the trainable partition, jitted with the state donated, as `train.programs` builds them: the Linen
model through `Spliced.apply`, the NNX model through `nnx.functional.Functional.apply` (what an
`nnx:` run trains). They step in turn, so machine noise hits both alike.

What differs besides the framework: the Linen BERT draws dropout masks from a counter hash and runs
CPU training attention in head groups with a hand-written backward (`models.bert`); the twin uses
`nnx.Dropout` (threefry) and einsum attention differentiated by XLA. `--dropout 0` takes dropout
out (both then run `jax.nn.dot_product_attention`), leaving the framework's own cost.

    .venv/bin/python scripts/bench_nnx.py --dims minilm --shape 8x128 --dropout 0.1
    .venv/bin/python scripts/bench_nnx.py --dims minilm --shape 8x128 --dropout 0
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from adapters_jax.methods import get_method
from adapters_jax.models import EncoderConfig, classification_model
from adapters_jax.nn.activations import get_activation
from adapters_jax.nnx import splice as nnx_splice
from adapters_jax.nnx.functional import Functional
from adapters_jax.nnx.trainable import trained_filter
from adapters_jax.splicing import trainable
from adapters_jax.splicing.sites import HEAD_PARAMS
from adapters_jax.splicing.splice import Spliced, add_adapter
from adapters_jax.train import optimizer
from adapters_jax.train.step import classification_loss, create_train_state, train_step

DIMS = {
    'minilm': dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                   intermediate_size=1536),
    'tiny': dict(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
}
ADAPTER = 'task'


class Embeddings(nnx.Module):

  def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
    width = cfg.hidden_size
    self.word_embeddings = nnx.Embed(cfg.vocab_size, width, rngs=rngs)
    self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, width, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, width, rngs=rngs)
    self.layer_norm = nnx.LayerNorm(width, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)

  def __call__(self, ids, types):  # [batch, seq] each -> [batch, seq, hidden]
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    hidden = (self.word_embeddings(ids) + self.position_embeddings(positions)
              + self.token_type_embeddings(types))
    return self.dropout(self.layer_norm(hidden))


class Attention(nnx.Module):

  def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.query, self.key, self.value, self.output = (
        nnx.Linear(cfg.hidden_size, cfg.hidden_size, rngs=rngs) for _ in range(4))
    self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)
    self.deterministic = False  # model.eval() / model.train() set it

  def __call__(self, hidden, mask, query_hidden):  # mask [batch, 1, 1, seq] bool
    cfg = self.cfg
    split = lambda x: x.reshape(x.shape[0], x.shape[1], cfg.num_heads, cfg.head_dim)
    q, k, v = split(self.query(query_hidden)), split(self.key(hidden)), split(self.value(hidden))
    if cfg.attention_dropout > 0 and not self.deterministic:
      scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(cfg.head_dim)
      probabilities = jax.nn.softmax(jnp.where(mask, scores, -1e9), axis=-1)
      context = jnp.einsum('bhqk,bkhd->bqhd', self.dropout(probabilities), v)
    else:
      context = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return self.output(context.reshape(context.shape[0], context.shape[1], cfg.hidden_size))


class FeedForward(nnx.Module):

  def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
    self.intermediate = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs)
    self.output = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs)
    self.activation = get_activation(cfg.hidden_act)

  def __call__(self, hidden):
    return self.output(self.activation(self.intermediate(hidden)))


class Layer(nnx.Module):

  def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
    self.attention = Attention(cfg, rngs)
    self.attention_layer_norm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                                              rngs=rngs)
    self.ffn = FeedForward(cfg, rngs)
    self.ffn_layer_norm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)

  def __call__(self, hidden, mask, first_token_only):
    residual = hidden[:, :1] if first_token_only else hidden
    hidden = self.attention_layer_norm(
        residual + self.dropout(self.attention(hidden, mask, residual)))
    return self.ffn_layer_norm(hidden + self.dropout(self.ffn(hidden)))


class Encoder(nnx.Module):

  def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
    self.count = cfg.num_layers
    for i in range(cfg.num_layers):  # `layer_{i}`: the Linen paths
      setattr(self, f'layer_{i}', Layer(cfg, rngs))

  def __call__(self, hidden, mask):
    for i in range(self.count):
      hidden = getattr(self, f'layer_{i}')(hidden, mask, first_token_only=i == self.count - 1)
    return hidden


class Dense(nnx.Module):
  """A module holding one `dense` (the Linen pooler's and BERT head's paths)."""

  def __init__(self, features_in: int, features_out: int, rngs: nnx.Rngs):
    self.dense = nnx.Linear(features_in, features_out, rngs=rngs)


class Bert(nnx.Module):
  """(ids, mask, types) [batch, seq] -> logits [batch, num_labels], as `models.bert` computes."""

  def __init__(self, cfg: EncoderConfig, num_labels: int, rngs: nnx.Rngs):
    self.embeddings = Embeddings(cfg, rngs)
    self.encoder = Encoder(cfg, rngs)
    self.pooler = Dense(cfg.hidden_size, cfg.hidden_size, rngs)
    self.classifier = Dense(cfg.hidden_size, num_labels, rngs)
    self.head_dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)

  def __call__(self, ids, mask, types):
    hidden = self.encoder(self.embeddings(ids, types), mask.astype(bool)[:, None, None, :])
    pooled = jnp.tanh(self.pooler.dense(hidden[:, 0]))  # [batch, hidden]
    return self.classifier.dense(self.head_dropout(pooled))


def linen_step(cfg, batch, tx):
  """The Linen model's jitted step, its first state and frozen tree, and its eval logits."""
  model = classification_model(cfg, 2)
  params = model.init(jax.random.key(0), *batch[:3])['params']
  spliced, params = add_adapter(Spliced(model), params, ADAPTER, get_method('lora'),
                                jax.random.key(1), *batch[:3], deterministic=True)
  params = _perturb_adapter(params)
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter(ADAPTER)]))

  def loss(full, data, rng):
    logits = spliced.apply(full, *data[:3], deterministic=False, active=ADAPTER,
                           rngs={'dropout': rng})
    return classification_loss(logits, data[3])

  logits = spliced.apply(params, *batch[:3], deterministic=True, active=ADAPTER)
  return _step(loss, params, mask, tx), params, logits


def nnx_step(cfg, batch, tx, linen_params):
  """The NNX twin's jitted step (Linen weights copied in) and its eval logits."""
  model = Bert(cfg, 2, nnx.Rngs(0, dropout=0))
  nnx_splice.add_adapter(model, ADAPTER, get_method('lora'), jax.random.key(1), *batch[:3])
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  linen_flat = traverse_util.flatten_dict(linen_params, sep='/')
  names = {'/'.join(str(k) for k in path) for path, _ in flat}
  assert names == set(linen_flat), sorted(names ^ set(linen_flat))[:8]
  for path, variable in flat:
    variable[...] = linen_flat['/'.join(str(k) for k in path)]
  nnx.update(model, nnx.from_flat_state(flat))
  functional = Functional(model)
  mask = functional.mask(trained_filter(model, extra=(HEAD_PARAMS,)))

  def loss(full, data, rng):
    logits = functional.apply(full, *data[:3], deterministic=False, active=ADAPTER,
                              rngs={'dropout': rng})
    return classification_loss(logits, data[3])

  logits = functional.apply(functional.params, *batch[:3], active=ADAPTER)
  return _step(loss, functional.params, mask, tx), logits


def _perturb_adapter(params):
  """LoRA's B starts at zero; nonzero values make the equality check cover the adapter."""
  flat = traverse_util.flatten_dict(params, sep='/')
  rng = np.random.default_rng(0)
  for path in flat:
    if '/adapters/' in path:
      flat[path] = flat[path] + 0.05 * rng.standard_normal(flat[path].shape).astype(np.float32)
  return traverse_util.unflatten_dict(flat, sep='/')


def _step(loss, params, mask, tx):
  train, frozen = trainable.split(params, mask)
  state = create_train_state(train, tx, jax.random.key(0))
  step = jax.jit(functools.partial(train_step, apply_fn=loss, loss_fn=lambda out, _: out, tx=tx),
                 donate_argnums=(0,))
  return step, state, frozen


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dims', choices=sorted(DIMS), default='minilm')
  parser.add_argument('--shape', default='8x128', help='batch x length')
  parser.add_argument('--dropout', type=float, default=0.1, help='hidden and attention dropout')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per model')
  args = parser.parse_args()
  batch_size, length = (int(x) for x in args.shape.split('x'))
  cfg = EncoderConfig(**DIMS[args.dims], hidden_dropout=args.dropout,
                      attention_dropout=args.dropout)
  ids = jax.random.randint(jax.random.key(2), (batch_size, length), 1, cfg.vocab_size)
  mask = jnp.ones_like(ids).at[:, length * 3 // 4:].set(0)
  batch = (ids, mask, jnp.zeros_like(ids), jnp.zeros(batch_size, jnp.int32))
  tx = optimizer.adamw(1e-3, weight_decay=0.01, clip_norm=1.0)

  (linen, linen_state, linen_frozen), linen_params, linen_logits = linen_step(cfg, batch, tx)
  (nnx_train, nnx_state, nnx_frozen), nnx_logits = nnx_step(cfg, batch, tx, linen_params)
  gap = float(jnp.max(jnp.abs(linen_logits - nnx_logits)))
  assert gap < 1e-4, f'the twin computes other logits (max gap {gap})'
  states = {'linen': linen_state, 'nnx': nnx_state}
  steps = {'linen': (linen, linen_frozen), 'nnx': (nnx_train, nnx_frozen)}
  compile_s, times = {}, {'linen': [], 'nnx': []}
  for name, (step, frozen) in steps.items():  # compile and warm up
    start = time.perf_counter()
    states[name], metrics = step(states[name], frozen, batch)
    jax.block_until_ready(metrics)
    compile_s[name] = time.perf_counter() - start
  for _ in range(args.steps):
    for name, (step, frozen) in steps.items():
      start = time.perf_counter()
      states[name], metrics = step(states[name], frozen, batch)
      jax.block_until_ready(metrics)
      times[name].append(time.perf_counter() - start)
  median = {name: statistics.median(t) for name, t in times.items()}
  print(json.dumps({
      'dims': args.dims, 'shape': args.shape, 'dropout': args.dropout, 'backend': jax.default_backend(),
      'eval_logits_max_gap': gap, 'compile_s': {k: round(v, 2) for k, v in compile_s.items()},
      'step_ms': {k: round(1e3 * v, 2) for k, v in median.items()},
      'examples_per_second': {k: round(batch_size / v, 1) for k, v in median.items()},
      'nnx_over_linen_step_time': round(median['nnx'] / median['linen'], 3)}, indent=2))


if __name__ == '__main__':
  main()

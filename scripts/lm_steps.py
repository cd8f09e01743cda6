"""Adapter train steps of our language-model backbones, built the way the training loop builds them.

* `llama_adapter_step`: LoRA (or DoRA, VeRA, prefix or prompt tuning) on a Llama-shaped
  `DecoderLM`, next-token cross-entropy; concrete
  (random weights, for timing) or abstract (`jax.ShapeDtypeStruct`s carrying shardings, for
  `lower().compile()` of a 7B step without materialising a weight); placed on a mesh by the
  rules of `adapters_jax.train.sharding_rules`; with `quantize`, QLoRA (the frozen kernels and
  embeddings stored as `adapters_jax.quantization` blocks, dequantised inside the step).
* `t5_adapter_step`: a preset (Houlsby, Pfeiffer, LoRA) on a T5 of t5-small's shape, teacher
  forcing (decoder inputs = labels shifted right), token cross-entropy.

Both go through `splice.add_adapter` -> `trainable.adapter_rules` / `split` -> `optimizer.adamw`
-> `train.step.train_step`, jitted with the state donated. `scripts/memory_estimate.py` and
`scripts/bench_lm.py` use them; the tests load this file by path.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adapters_jax import quantization
from adapters_jax.methods import get_method
from adapters_jax.models import DecoderConfig, DecoderLM, T5Config, T5ForConditionalGeneration
from adapters_jax.models.t5 import shift_right
from adapters_jax.splicing import splice, trainable
from adapters_jax.train import optimizer, placement, sharding_rules
from adapters_jax.train.step import create_train_state, train_step

ADAPTER_NAME = 'bench'
# Llama shapes: 7B (Llama-2 7B), Llama-3 8B, a small GQA one for CPU benchmarks, a tiny one for
# tests.
LLAMA = {
    'llama-7b': dict(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                     num_kv_heads=32, head_dim=128, intermediate_size=11008),
    'llama-3-8b': dict(vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
                       num_kv_heads=8, head_dim=128, intermediate_size=14336,
                       rope_theta=500000.0),
    'llama-small': dict(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8,
                        num_kv_heads=2, head_dim=64, intermediate_size=1408),
    'llama-tiny': dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, intermediate_size=64),
}
# T5 shapes: t5-small (T5Config's defaults) and a tiny one for tests.
T5 = {
    't5-small': {},
    't5-tiny': dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                    num_decoder_layers=2, num_heads=4),
}


def token_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean cross-entropy of `logits` [batch, len, vocab] at `targets` [batch, len] over the
  positions with `weights` 1."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  weights = weights.astype(jnp.float32)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def causal_lm_loss(logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
  """Next-token loss: position t predicts `input_ids[:, t + 1]`."""
  return token_loss(logits[:, :-1], batch['input_ids'][:, 1:], batch['attention_mask'][:, 1:])


# Presets `llama_adapter_step` builds: all on query and value, in parallel to the host's dense.
LLAMA_METHODS = ('lora', 'dora', 'vera', 'prefix_tuning', 'prompt_tuning')


def _llama_method(method: str, rank: int | None):
  if method not in LLAMA_METHODS:
    raise ValueError(f'The Llama step has {", ".join(LLAMA_METHODS)}, not {method!r}.')
  if rank is None or method in ('prefix_tuning', 'prompt_tuning'):  # the preset's own size
    return get_method(method)
  return get_method(method, rank=rank)


def llama_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {'input_ids': rng.integers(0, vocab, (batch, length)).astype(np.int32),
          'attention_mask': np.ones((batch, length), np.int32)}


def llama_adapter_step(shape: str | DecoderConfig, batch: int, length: int, *,
                       method: str = 'lora', rank: int | None = 8, mesh=None,
                       rules: sharding_rules.Rules | None = None, frozen_dtype=jnp.float32,
                       abstract: bool = False, quantize: str = '', block_size: int = 64,
                       **config_overrides: Any) -> dict[str, Any]:
  """`method` (a preset of `LLAMA_METHODS`, on query/value) on a Llama of `shape` (a `LLAMA`
  key or a config).

  Args:
    method, rank: the preset and its rank (None: the preset's own, e.g. VeRA's 256).
    mesh, rules: place state, frozen params and batch (rows over `data`) by `rules` on `mesh`,
      with `in_shardings`/`out_shardings` on the jit; None: one device, no placement.
    frozen_dtype: storage dtype of the frozen base (the trained adapter leaves stay float32); of
      the block scales when `quantize`.
    quantize, block_size: '' (float base) or a `quantization.KINDS` codec with `block_size`
      values per block for the frozen kernels and embedding tables.
    abstract: frozen params and batch as ShapeDtypeStructs (nothing materialised but the
      adapter leaves); only `step.lower(state, frozen, batch)` is meaningful then.
    **config_overrides: DecoderConfig fields (dtype, remat, scan_layers, dropouts).

  Returns:
    `step` (jitted, state donated), `state`, `frozen`, `batch`, `config`, `counts`.
  """
  config = shape if isinstance(shape, DecoderConfig) else DecoderConfig(**LLAMA[shape])
  config = config.replace(**config_overrides)
  model = DecoderLM(config)
  sample = jnp.ones((1, 8), jnp.int32)
  init = functools.partial(model.init, jax.random.key(0), sample)
  params = jax.eval_shape(init)['params'] if abstract else jax.jit(init)()['params']
  spliced, params = splice.add_adapter(model, params, ADAPTER_NAME,
                                       _llama_method(method, rank), jax.random.key(1), sample)
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter(ADAPTER_NAME)],
                                                             train_head=False))
  counts = trainable.count(params, mask)
  train_params, frozen = trainable.split(params, mask)
  if quantize:
    frozen = quantization.quantize_frozen(frozen, jax.tree.map(lambda _: False, frozen), quantize,
                                          block_size)
  frozen = sharding_rules.cast_floating(frozen, frozen_dtype)
  if abstract:
    frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), frozen)
  tx = optimizer.adamw(1e-4, weight_decay=0.0)
  state = create_train_state(train_params, tx, jax.random.key(2))
  host_batch = llama_batch(batch, length, config.vocab_size)
  frozen_sh = None if mesh is None else sharding_rules.tree_shardings(frozen, rules, mesh)

  def apply_fn(p, b, rng):
    # Dequantised kernels stay split as their codes are (an untied head is not gathered whole).
    p = quantization.dequantize_tree(p, keep_tables=True, shardings=frozen_sh)
    return spliced.apply(p, b['input_ids'], b['attention_mask'], deterministic=False,
                         active=ADAPTER_NAME, rngs={'dropout': rng})

  fn = functools.partial(train_step, apply_fn=apply_fn, loss_fn=causal_lm_loss, tx=tx)
  if mesh is None:
    step = jax.jit(fn, donate_argnums=(0,))
    batch_arrays = ({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}
                    if abstract else jax.tree.map(jnp.asarray, host_batch))
  else:
    state_sh = sharding_rules.state_shardings(state, rules, mesh)
    batch_sh = {k: placement.batch_sharding(mesh) for k in host_batch}
    step = jax.jit(fn, in_shardings=(state_sh, frozen_sh, batch_sh),
                   out_shardings=(state_sh, placement.replicated(mesh)), donate_argnums=(0,))
    state = jax.device_put(state, state_sh)
    if abstract:
      frozen = sharding_rules.abstract(frozen, frozen_sh)
      batch_arrays = sharding_rules.abstract(host_batch, batch_sh)
    else:
      frozen = jax.device_put(frozen, frozen_sh)
      batch_arrays = jax.device_put(host_batch, batch_sh)
  return {'step': step, 'state': state, 'frozen': frozen, 'batch': batch_arrays,
          'config': config, 'counts': counts}


def t5_batch(batch: int, length: int, target_length: int, config: T5Config,
             seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  labels = rng.integers(2, config.vocab_size, (batch, target_length)).astype(np.int32)
  return {'input_ids': rng.integers(2, config.vocab_size, (batch, length)).astype(np.int32),
          'attention_mask': np.ones((batch, length), np.int32),
          'decoder_input_ids': np.asarray(shift_right(labels, config)),
          'labels': labels}


def t5_adapter_step(method: str, shape: str, batch: int, length: int, target_length: int,
                    **config_overrides: Any) -> dict[str, Any]:
  """`method` (a preset: houlsby, pfeiffer, lora; or `full`) on a T5 of `shape` (a `T5` key),
  random weights, teacher forcing. Returns `step`, `state`, `frozen`, `batch`, `counts`."""
  config = T5Config(**T5[shape]).replace(**config_overrides)
  model = T5ForConditionalGeneration(config)
  src, tgt = jnp.ones((1, 8), jnp.int32), jnp.ones((1, 4), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), src, None, tgt)['params']
  spliced, name = splice.Spliced(model), None
  if method == 'full':
    rules = [(r'.*', True)]
  else:
    name = ADAPTER_NAME
    spliced, params = splice.add_adapter(spliced, params, name, get_method(method),
                                         jax.random.key(1), src, None, tgt)
    rules = trainable.adapter_rules([spliced.adapter(name)], train_head=False)
  mask = trainable.make_mask(params, rules)
  train_params, frozen = trainable.split(params, mask)
  tx = optimizer.adamw(1e-4, weight_decay=0.0)
  state = create_train_state(train_params, tx, jax.random.key(2))

  def apply_fn(p, b, rng):
    return spliced.apply(p, b['input_ids'], b['attention_mask'], b['decoder_input_ids'],
                         deterministic=False, active=name, rngs={'dropout': rng})

  def loss_fn(logits, b):
    return token_loss(logits, b['labels'], jnp.ones_like(b['labels']))

  step = jax.jit(functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx),
                 donate_argnums=(0,))
  host_batch = t5_batch(batch, length, target_length, config)
  return {'step': step, 'state': state, 'frozen': frozen,
          'batch': jax.tree.map(jnp.asarray, host_batch), 'config': config,
          'counts': trainable.count(params, mask)}

"""The building blocks of T5: RMS layer norm, relative position buckets, attention, feed-forward.

Module names inside a block are those the adapter site patterns of `adapters_jax.splicing.sites` read
(`attention/{query,key,value,output}`, `cross_attention/...`, `ffn/{intermediate,output}`), so a
preset means the same place on T5 as on BERT. Every projection is its own `nn.Dense` called
through `__call__`, without bias (as T5), so an interceptor can rescale or add to any of them.

Numerics: params float32; matmuls in `config.compute_dtype`; layer norm, attention scores,
softmax and the residual stream in float32. T5 does not scale the scores by `d_kv ** -0.5` (the
init absorbs it).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax.models.t5_config import T5Config
from adapters_jax.nn.activations import get_activation
from adapters_jax.nn.dropout import Dropout, apply_keep_mask
from adapters_jax.nn.key_value_hook import KeyValueHook, pad_keys_in_front
from adapters_jax.quantization.embedding import stored_table, take_rows

_MASKED = float(np.finfo(np.float32).min)  # what HF adds to masked scores


def dense(config: T5Config, features: int, name: str, std: float) -> nn.Dense:
  """A bias-free projection with T5's init (`std` before `initializer_factor`)."""
  return nn.Dense(features, use_bias=False, dtype=config.compute_dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(config.initializer_factor * std), name=name)


class T5LayerNorm(nn.Module):
  """RMS norm without mean or bias: `scale * x / sqrt(mean(x^2) + eps)`, float32 in and out."""

  epsilon: float

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)  # [..., d_model]
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return scale * (x * jax.lax.rsqrt(variance + self.epsilon))


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """T5's bucket of `memory_position - query_position` (int32, any shape), as HF/Mesh TF.

  Half of the buckets (per direction when `bidirectional`) are exact offsets; the other half
  grow logarithmically up to `max_distance`, beyond which offsets share the last bucket. The
  causal (decoder) variant maps every future offset to bucket 0.
  """
  relative_position = jnp.asarray(relative_position, jnp.int32)
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # float32 as HF; distance 0 gives log(0) = -inf, masked by `is_small`.
  ratio = distance.astype(jnp.float32) / max_exact
  large = max_exact + (jnp.log(jnp.maximum(ratio, 1e-30)) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
  """The per-head additive attention bias of a stack, `[1, heads, q_len, k_len]` float32.

  One table `[num_buckets, heads]` per stack (HF keeps it in block 0 and shares the bias with
  every block; here it sits beside the blocks, so scanned blocks are all alike).
  """

  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions, key_positions):
    """`query_positions` [q_len], `key_positions` [k_len] int32 -> `[1, heads, q_len, k_len]`."""
    cfg = self.config
    buckets = relative_position_bucket(
        key_positions[None, :] - query_positions[:, None], self.bidirectional,
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)  # [q, k]
    table = stored_table(self, nn.initializers.normal(cfg.initializer_factor * cfg.d_model ** -0.5),
                         (cfg.relative_attention_num_buckets, cfg.num_heads), jnp.float32)
    return jnp.transpose(take_rows(table, buckets), (2, 0, 1))[None]


class Attention(nn.Module):
  """Multi-head attention with an additive bias; self- or cross-attention by its inputs.

  `mask` is boolean, broadcastable to `[batch, heads, q_len, k_len]`, True = attend; `bias` is
  float32, broadcastable to the same shape (relative positions; None for cross-attention).
  Keys, values and mask pass through the `prefix` hook (`adapters_jax.nn.key_value_hook`), where
  prefix tuning prepends its keys and values; the bias gets zeros for them.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.query = dense(cfg, cfg.inner_dim, 'query', (cfg.d_model * cfg.d_kv) ** -0.5)
    self.key = dense(cfg, cfg.inner_dim, 'key', cfg.d_model ** -0.5)
    self.value = dense(cfg, cfg.inner_dim, 'value', cfg.d_model ** -0.5)
    self.output = dense(cfg, cfg.d_model, 'output', cfg.inner_dim ** -0.5)
    self.dropout = Dropout(cfg.dropout_rate)
    self.prefix = KeyValueHook()

  def _heads(self, x):  # [batch, len, inner] -> [batch, len, heads, d_kv]
    return x.reshape(x.shape[0], x.shape[1], self.config.num_heads, self.config.d_kv)

  def key_value(self, hidden):
    """Keys and values of `hidden` [batch, k_len, d_model]: two `[batch, k_len, heads, d_kv]`."""
    return self._heads(self.key(hidden)), self._heads(self.value(hidden))

  def __call__(self, hidden, key, value, bias, mask, deterministic: bool):
    """Queries from `hidden` [batch, q_len, d_model] attend over `key`/`value` [batch, k_len,
    heads, d_kv] (from `key_value`). Returns the output projection `[batch, q_len, d_model]`."""
    cfg = self.config
    query = self._heads(self.query(hidden))  # [batch, q_len, heads, d_kv]
    # prefix tuning may add keys in front; `hidden` (the queries' input) feeds its gate
    key, value, mask = self.prefix(key, value, mask, hidden)
    bias = pad_keys_in_front(bias, key.shape[1])  # added keys have no relative position
    scores = jnp.einsum('bqhd,bkhd->bhqk', query, key.astype(query.dtype),
                        preferred_element_type=jnp.float32)  # [batch, heads, q_len, k_len]
    if bias is not None:
      scores = scores + bias
    scores = jnp.where(mask, scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1)
    if cfg.dropout_rate > 0.0 and not deterministic:
      probs = apply_keep_mask(probs, self.dropout.keep_mask(probs.shape), cfg.dropout_rate)
    context = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(query.dtype), value.astype(query.dtype))
    context = context.reshape(context.shape[0], context.shape[1], cfg.inner_dim)
    return self.output(context)  # [batch, q_len, d_model]


class FeedForward(nn.Module):
  """`output(act(intermediate(x)))` (v1.0) or `output(act(intermediate(x)) * intermediate_linear(x))`
  (gated, v1.1), before the residual: `[batch, seq, d_model]`.

  `intermediate` is HF's `wi` / `wi_0` (the activated branch), `intermediate_linear` HF's `wi_1`.
  """

  config: T5Config

  @nn.compact
  def __call__(self, hidden, deterministic: bool):
    cfg = self.config
    inner = dense(cfg, cfg.d_ff, 'intermediate', cfg.d_model ** -0.5)(hidden)  # [b, s, d_ff]
    inner = get_activation(cfg.activation)(inner)
    if cfg.is_gated:
      inner = inner * dense(cfg, cfg.d_ff, 'intermediate_linear', cfg.d_model ** -0.5)(hidden)
    inner = Dropout(cfg.dropout_rate)(inner, deterministic=deterministic)
    return dense(cfg, cfg.d_model, 'output', cfg.d_ff ** -0.5)(inner)

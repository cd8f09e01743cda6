"""One pre-norm decoder block (attention with RoPE/GQA/KV cache, plain or gated MLP) and norms.

Module paths inside a block (adapter site patterns in `adapters_jax.splicing.sites` read them):

    attention_layer_norm                     LayerNorm (GPT-2) or RMSNorm (Llama), before attention
    attention/{query,key,value,output}       nn.Dense; key/value have num_kv_heads * head_dim
    attention/prefix                         KeyValueHook: keys, values and mask after the cache,
                                             and the attention's input
    ffn_layer_norm                           before the MLP
    ffn/{gate,intermediate,output}           nn.Dense; `gate` only for gated MLPs (SwiGLU/GeGLU):
                                             output(act(gate(x)) * intermediate(x)); plain MLPs
                                             (GPT-2) compute output(act(intermediate(x)))

Every projection is its own `nn.Dense` called through `__call__` (GPT-2's fused `c_attn` is split
at load time), so the splice interceptor sees each one. The residual stream is float32; matmuls
run in `config.dtype`; norms, RoPE and softmax in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.models.decoder_config import DecoderConfig
from adapters_jax.models.dropout_attention import dropout_attention
from adapters_jax.models.kv_cache import write_slots
from adapters_jax.models.rope import apply_rotary
from adapters_jax.nn.activations import get_activation
from adapters_jax.nn.dropout import Dropout
from adapters_jax.nn.key_value_hook import KeyValueHook


def dense(config: DecoderConfig, features: int, use_bias: bool, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=config.compute_dtype,
                  param_dtype=jnp.float32, name=name,
                  kernel_init=nn.initializers.normal(config.initializer_range))


class RMSNorm(nn.Module):
  """`x / rms(x) * w` in float32 (`* (1 + w)` with `unit_offset`, Gemma); param `scale`."""

  epsilon: float
  unit_offset: bool = False

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.unit_offset else nn.initializers.ones
    scale = self.param('scale', init, (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    normed = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.epsilon)
    return normed * (1.0 + scale if self.unit_offset else scale)


def norm(config: DecoderConfig, name: str) -> nn.Module:
  """The block's norm: LayerNorm or RMSNorm by `config.norm`, float32 in and out."""
  if config.norm == 'layer_norm':
    return nn.LayerNorm(epsilon=config.norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                        name=name)
  return RMSNorm(config.norm_eps, config.norm_unit_offset, name=name)


class DecoderAttention(nn.Module):
  """Causal multi-head attention with grouped-query heads, RoPE and an optional KV cache."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, hidden, mask, cos, sin, layer_kv, cache_index, deterministic: bool):
    """Attends `hidden` `[batch, s, hidden]` to itself (and to the cached slots).

    Args:
      mask: bool `[batch, 1, s, k_len]`, True = attend; k_len is the cache length with a cache.
      cos, sin: `[batch, s, head_dim]` rotary tables, or None (learned positions).
      layer_kv: None, or this layer's cached (keys, values) `[batch, max_len, kv_heads, dim]`.
      cache_index: int32 scalar, the slot of the first new token (ignored without a cache).

    Returns:
      `([batch, s, hidden], new layer_kv or None)`.
    """
    cfg = self.config
    batch, seq = hidden.shape[:2]
    q_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    query = dense(cfg, q_width, cfg.qkv_bias, 'query')(hidden)
    key = dense(cfg, kv_width, cfg.qkv_bias, 'key')(hidden)
    value = dense(cfg, kv_width, cfg.qkv_bias, 'value')(hidden)
    query = query.reshape(batch, seq, cfg.num_heads, cfg.head_dim)  # [b, s, heads, dim]
    key = key.reshape(batch, seq, cfg.num_kv_heads, cfg.head_dim)  # [b, s, kv_heads, dim]
    value = value.reshape(batch, seq, cfg.num_kv_heads, cfg.head_dim)
    if cos is not None:
      query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
    new_kv = None
    if layer_kv is not None:
      key = write_slots(layer_kv[0], key, cache_index)  # [b, max_len, kv_heads, dim]
      value = write_slots(layer_kv[1], value, cache_index)
      new_kv = (key, value)
    # Prefix tuning prepends its keys here, after the cache: the cache holds real tokens only.
    key, value, mask = KeyValueHook(name='prefix')(key, value, mask, hidden)
    key, value = key.astype(query.dtype), value.astype(query.dtype)
    if cfg.attention_dropout > 0.0 and not deterministic:
      context = self._attention_with_dropout(query, key, value, mask)
    else:
      context = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                             scale=cfg.head_dim ** -0.5)
    context = context.reshape(batch, seq, q_width)  # [batch, s, heads * dim]
    out = dense(cfg, cfg.hidden_size, cfg.attention_output_bias, 'output')(context)
    return out, new_kv

  def _attention_with_dropout(self, query, key, value, mask):
    """Softmax attention with dropout on the probabilities (training), key/value heads repeated
    to the query heads; `[batch, s, heads, dim]`."""
    cfg = self.config
    groups = cfg.num_heads // cfg.num_kv_heads
    key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
    dropout = Dropout(cfg.attention_dropout)
    keep = dropout.keep_mask((query.shape[0], cfg.num_heads, query.shape[1], key.shape[1]))
    return dropout_attention(query, key, value, mask, keep, cfg.attention_dropout)


class DecoderFeedForward(nn.Module):
  """Plain `output(act(intermediate(x)))` or gated `output(act(gate(x)) * intermediate(x))`."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, hidden):
    cfg = self.config
    act = get_activation(cfg.hidden_act)
    inner = dense(cfg, cfg.intermediate_size, cfg.mlp_bias, 'intermediate')(hidden)
    if cfg.mlp == 'gated':
      inner = act(dense(cfg, cfg.intermediate_size, cfg.mlp_bias, 'gate')(hidden)) * inner
    else:
      inner = act(inner)  # [batch, s, intermediate]
    return dense(cfg, cfg.hidden_size, cfg.mlp_bias, 'output')(inner)


class DecoderLayer(nn.Module):
  """Pre-norm block: `h = x + attn(norm(x)); h + ffn(norm(h))`. Returns `(hidden, new_kv)`,
  the form `nn.scan` needs (carry, per-layer output)."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, hidden, mask, cos, sin, layer_kv, cache_index, deterministic: bool):
    cfg = self.config
    attended, new_kv = DecoderAttention(cfg, name='attention')(
        norm(cfg, 'attention_layer_norm')(hidden), mask, cos, sin, layer_kv, cache_index,
        deterministic)
    hidden = hidden + Dropout(cfg.hidden_dropout)(
        attended.astype(jnp.float32), deterministic=deterministic)
    transformed = DecoderFeedForward(cfg, name='ffn')(norm(cfg, 'ffn_layer_norm')(hidden))
    hidden = hidden + Dropout(cfg.hidden_dropout)(
        transformed.astype(jnp.float32), deterministic=deterministic)
    return hidden, new_kv  # [batch, s, hidden] float32

"""Rotary position embeddings (RoPE) with the scaling variants of HF `rope_scaling`.

Inverse frequencies as in transformers' `modeling_rope_utils` (float32), then HF's "rotate half"
convention: the two halves of each head are the real and imaginary parts (the layout HF Llama
checkpoints are stored in).

  default   inv_freq = 1 / theta^(2i / dim)
  linear    inv_freq / factor                  (positions interpolated by `factor`)
  dynamic   theta' = theta * (factor * L / L0 - (factor - 1))^(dim / (dim - 2)) when the call's
            length L = max(position) + 1 exceeds L0 = max_position_embeddings; else default
  llama3    long wavelengths (> L0 / low_freq_factor) divided by factor, short ones
            (< L0 / high_freq_factor) kept, a smooth blend between

Example:
  cos, sin = rotary_cos_sin(config, positions)   # [batch, seq, head_dim] each
  query = apply_rotary(query, cos, sin)          # query [batch, seq, heads, head_dim]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax.models.decoder_config import DecoderConfig


def base_inverse_frequencies(config: DecoderConfig) -> np.ndarray:
  """`[head_dim // 2]` float32 inverse frequencies of the static variants (not `dynamic`)."""
  dim = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  inv_freq = inv_freq.astype(np.float32)
  if config.rope_type == 'linear':
    return (inv_freq / np.float32(config.rope_factor)).astype(np.float32)
  if config.rope_type == 'llama3':
    return _llama3(inv_freq, config)
  return inv_freq


def _llama3(inv_freq: np.ndarray, config: DecoderConfig) -> np.ndarray:
  factor = config.rope_factor
  low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
  old_len = config.rope_original_max_position_embeddings
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def inverse_frequencies(config: DecoderConfig, positions: jax.Array) -> jax.Array:
  """`[head_dim // 2]` float32 inverse frequencies for a call at `positions` `[batch, seq]`.

  Only `dynamic` depends on the positions: its base grows with the largest position of the
  call (HF recomputes it per forward pass, so cached generation matches HF step by step).
  """
  if config.rope_type != 'dynamic':
    return jnp.asarray(base_inverse_frequencies(config))
  dim, factor = config.head_dim, config.rope_factor
  original = config.rope_original_max_position_embeddings
  seq_len = jnp.maximum(jnp.max(positions) + 1, original).astype(jnp.float32)
  base = config.rope_theta * ((factor * seq_len / original) - (factor - 1)) ** (dim / (dim - 2))
  exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
  return 1.0 / (base ** exponents)


def rotary_cos_sin(config: DecoderConfig,
                   positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos and sin `[batch, seq, head_dim]` float32 for integer `positions` `[batch, seq]`."""
  inv_freq = inverse_frequencies(config, positions)  # [head_dim // 2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, seq, head_dim // 2]
  angles = jnp.concatenate([angles, angles], axis=-1)  # [batch, seq, head_dim]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates `x` `[batch, seq, heads, head_dim]` by cos/sin `[batch, seq, head_dim]`.

  Computed in float32, returned in `x.dtype`.
  """
  half = x.shape[-1] // 2
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)

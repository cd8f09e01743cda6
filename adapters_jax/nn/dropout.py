"""Inverted dropout whose mask comes from a counter-based integer hash seeded by one PRNG key.

* `Dropout`: drop-in for `nn.Dropout` inside the backbones and adapters (RNG stream 'dropout').
* `dropout_keep_mask` / `apply_keep_mask`: the mask alone, and a given mask applied (attention
  reuses one mask).

On CPU the hash costs ~1/20 of threefry `jax.random.bernoulli`. Used on every backend: the mask
depends only on the key and the shape, so a run draws the same dropout on CPU, GPU and TPU, and the
hash is a few integer ops per element there too (docs/performance.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Constants of the dropout hash: the golden-ratio Weyl increment and the two multipliers of
# Chris Wellons' `lowbias32` integer hash (an avalanche-tested 32-bit finaliser).
_WEYL = np.uint32(0x9E3779B9)
_MIX1, _MIX2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)


def _mix32(h: jax.Array) -> jax.Array:
  h = h ^ (h >> 16)
  h = h * _MIX1
  h = h ^ (h >> 15)
  h = h * _MIX2
  return h ^ (h >> 16)


def dropout_keep_mask(rng: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
  """Boolean keep-mask, True with probability `1 - rate`, from one PRNG key.

  Two `jax.random.bits` words seed a counter-based integer hash of each element's flat index
  (Weyl sequence + two rounds of `lowbias32`). On CPU this costs ~1/20 of
  `jax.random.bernoulli` (threefry), which took ~15% of a BERT train step. The mask depends only
  on the key and the shape (not on sharding or layout).
  """
  size = int(np.prod(shape))
  if size >= 2**32:
    raise ValueError(f'dropout on {size} elements: the 32-bit counter would wrap; '
                     'apply dropout to smaller chunks.')
  seeds = jax.random.bits(rng, (2,), jnp.uint32)
  counter = lax.iota(jnp.uint32, size).reshape(shape)
  bits = _mix32(_mix32(counter * _WEYL + seeds[0]) ^ seeds[1])
  threshold = min(int(round(rate * 2.0**32)), 2**32 - 1)
  return bits >= np.uint32(threshold)


def apply_keep_mask(x: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
  """Inverted dropout with a given mask: `x / (1 - rate)` where `keep` (broadcastable to `x`)
  is True, 0 elsewhere; in `x.dtype`."""
  return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """Inverted dropout (`x / (1 - rate)` on kept elements, 0 elsewhere), RNG stream 'dropout'.

  Drop-in for `nn.Dropout` inside the backbone, with the cheaper mask of `dropout_keep_mask`.
  """

  rate: float

  def keep_mask(self, shape: tuple[int, ...]) -> jax.Array:
    """The boolean keep-mask `__call__` would apply to an input of `shape`."""
    return dropout_keep_mask(self.make_rng('dropout'), shape, self.rate)

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    return apply_keep_mask(x, self.keep_mask(x.shape), self.rate)


"""Fast exact building blocks shared by the backbones and the adapter modules.

* `gelu_exact`: the exact (erf) GELU with a hand-written derivative; cheaper on CPU than
  differentiating `jax.nn.gelu(approximate=False)` (which goes through `erfc`).
* `Dropout` / `dropout_keep_mask` / `apply_keep_mask`: inverted dropout whose mask comes from a
  counter-based integer hash seeded by one PRNG key; on CPU ~1/20 of the cost of threefry
  `jax.random.bernoulli`. `apply_keep_mask` applies a given mask (attention reuses one mask).
  Used on every backend: the mask depends only on the key and the shape, so a run draws the same
  dropout on CPU, GPU and TPU, and the hash is a few integer ops per element there too.

See docs/performance.md for the measurements behind both.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_SQRT_HALF = 0.7071067811865476      # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327   # 1 / sqrt(2 pi)


def _normal_cdf(x: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


@jax.custom_jvp
def gelu_exact(x: jax.Array) -> jax.Array:
  """Exact GELU `x * Phi(x)`, written as HF/PyTorch do: `x * 0.5 * (1 + erf(x / sqrt(2)))`.

  Same function as `jax.nn.gelu(x, approximate=False)` (which uses `erfc`; they differ by
  ~1e-6 absolute in float32), but cheaper on CPU: XLA's float32 `erf` is one rational
  polynomial while `erfc` also needs an `exp`, and the derivative `Phi(x) + x * phi(x)` is given
  by hand instead of differentiating through `erfc` (see docs/performance.md).
  """
  return x * _normal_cdf(x)


@gelu_exact.defjvp
def _gelu_exact_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  cdf = _normal_cdf(x)
  pdf = jnp.asarray(_INV_SQRT_2PI, x.dtype) * jnp.exp(-0.5 * x * x)
  return x * cdf, t * (cdf + x * pdf)


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


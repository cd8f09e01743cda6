"""Activation functions by name: one table for the backbones (HF `hidden_act` names) and the adapters.

`gelu_exact` is the exact (erf) GELU with a hand-written derivative; cheaper on CPU than
differentiating `jax.nn.gelu(approximate=False)` (which goes through `erfc`; docs/performance.md).

    act = get_activation('gelu')      # [batch, seq, hidden] -> same shape
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
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


_gelu_tanh = functools.partial(jax.nn.gelu, approximate=True)

# HF's names (`hidden_act`, `activation_function`, T5's `feed_forward_proj` without `gated-`), plus
# `gelu_tanh`, the adapters' name of the tanh approximation. HF's 'gelu' is the exact erf GELU.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'gelu': gelu_exact,
    'gelu_tanh': _gelu_tanh,
    'gelu_new': _gelu_tanh,
    'gelu_pytorch_tanh': _gelu_tanh,
    'gelu_fast': _gelu_tanh,
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
    'swish': jax.nn.silu,
    'tanh': jnp.tanh,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function called `name`; an unknown name lists the valid ones."""
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; valid activations: {sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[name]

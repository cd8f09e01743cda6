"""UniPELT's input gate (Mao et al. 2022, as AdapterHub computes it): one scalar per example.

    gate = mean over positions of sigmoid(x W + b),   W: [features, 1], b: [1]

The gate multiplies a method's contribution (a LoRA update, a bottleneck's output) so the model can
weigh the methods of a union per input. W starts as N(0, 0.02), b at zero (AdapterHub's BERT init).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class InputGate(nn.Module):
  """`x` [batch, ..., features] -> gate [batch, 1, ..., 1] (same rank as `x`), in (0, 1).

  The mean runs over every axis between the batch and the features (the sequence), padding
  included, as AdapterHub's `torch.mean(gate, dim=1)`."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gate = jax.nn.sigmoid(nn.Dense(1, kernel_init=nn.initializers.normal(0.02), name='gate')(x))
    return jnp.mean(gate, axis=tuple(range(1, x.ndim - 1)), keepdims=True)  # [B, 1, ..., 1]

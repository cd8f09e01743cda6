"""UniPELT's input gate (Mao et al. 2022, as AdapterHub computes it): a scalar per example.

    gate = mean over positions of sigmoid(x W + b),   W: [features, outputs], b: [outputs]

The gate multiplies a method's contribution (a LoRA update, a bottleneck's output, a prefix's keys
and values) so the model can weigh the methods of a union per input. W starts as N(0, 0.02), b at
zero (AdapterHub's BERT init for bottlenecks; its prefix gate keeps torch's default bias,
`bias_init`). `outputs` is 1, or 2 for a prefix gated apart on keys and values.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class InputGate(nn.Module):
  """`x` [batch, ..., features] -> gate [batch, 1, ..., outputs] (same rank as `x`), in (0, 1).

  The mean runs over every axis between the batch and the features (the sequence), padding
  included, as AdapterHub's `torch.mean(gate, dim=1)`."""

  outputs: int = 1
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gate = jax.nn.sigmoid(nn.Dense(self.outputs, kernel_init=nn.initializers.normal(0.02),
                                   bias_init=self.bias_init, name='gate')(x))
    return jnp.mean(gate, axis=tuple(range(1, x.ndim - 1)), keepdims=True)  # [B, 1, .., outputs]

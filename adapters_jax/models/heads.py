"""Sequence-classification heads, named `classifier` in the task model's param tree.

Both compute in float32 (they are tiny) and return float32 logits `[batch, num_labels]`;
`num_labels=1` is regression.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from adapters_jax.nn.dropout import Dropout


def _dense(features: int, init_range: float, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=jnp.float32, param_dtype=jnp.float32, name=name,
                  kernel_init=nn.initializers.normal(init_range))


class BertClassificationHead(nn.Module):
  """HF BertForSequenceClassification: dropout + `dense` on the pooled output.

  Params: `classifier/dense/{kernel [hidden, num_labels], bias}` (HF `classifier.weight`).
  """

  num_labels: int
  dropout: float
  initializer_range: float = 0.02

  @nn.compact
  def __call__(self, pooled, deterministic: bool):
    pooled = Dropout(self.dropout)(pooled, deterministic=deterministic)  # [batch, hidden]
    return _dense(self.num_labels, self.initializer_range, 'dense')(pooled)


class RobertaClassificationHead(nn.Module):
  """HF RobertaClassificationHead on the first token: drop, dense, tanh, drop, out_proj.

  Params: `classifier/dense` (hidden->hidden) and `classifier/out_proj` (hidden->num_labels).
  """

  num_labels: int
  dropout: float
  initializer_range: float = 0.02

  @nn.compact
  def __call__(self, first_token, deterministic: bool):
    hidden = Dropout(self.dropout)(first_token, deterministic=deterministic)
    hidden = _dense(hidden.shape[-1], self.initializer_range, 'dense')(hidden)
    hidden = Dropout(self.dropout)(jnp.tanh(hidden), deterministic=deterministic)
    return _dense(self.num_labels, self.initializer_range, 'out_proj')(hidden)

"""The optimizer of the adapter runs: AdamW with global-norm clipping, weight decay on matrices only.

Give it the trainable partition only (`trainable.split`), so frozen leaves get no optimizer state:

    trainable_params, frozen = trainable.split(params, mask)
    tx = optimizer.adamw(1e-4, weight_decay=0.01)
    opt_state = tx.init(trainable_params)
"""

from __future__ import annotations

import jax
import numpy as np
import optax

from adapters_jax.splicing.tree import Params


def decay_mask(tree: Params) -> Params:
  """True for leaves weight decay applies to: matrices (ndim >= 2), not biases, norms or scales."""
  return jax.tree.map(lambda x: np.ndim(x) >= 2, tree)


def adamw(learning_rate: optax.ScalarOrSchedule, weight_decay: float = 0.0,
          clip_norm: float | None = 1.0, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8) -> optax.GradientTransformation:
  """AdamW with global-norm clipping; decay only on matrices. Give it the trainable tree only."""
  parts = []
  if clip_norm:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)

"""The train step: differentiate only the trainable partition; frozen weights are an argument.

    state, metrics = train_step(state, frozen, batch, apply_fn=..., loss_fn=..., tx=...)

`state.params` holds only trainable leaves and `state.opt_state` only their moments; the frozen
params are passed in every step and never differentiated, updated or copied. Jit it where it is used:

    step = jax.jit(functools.partial(train_step, apply_fn=..., loss_fn=..., tx=tx), donate_argnums=0)
"""

from __future__ import annotations

from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from adapters_jax.splicing import trainable
from adapters_jax.splicing.tree import Params

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes while training.

  Attributes:
    step: number of updates done, int32 scalar.
    params: the trainable leaves only (a partial tree; see `trainable.split`).
    opt_state: the optimizer state of `params` (nothing for frozen leaves).
    rng: base PRNG key; step `s` uses `fold_in(rng, s)`.
  """

  step: jax.Array
  params: Params
  opt_state: optax.OptState
  rng: jax.Array


def create_train_state(trainable_params: Params, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  """A fresh state. The params are copied: a jitted step donates the state, and donation must not
  delete arrays the caller still holds (e.g. the full tree the trainable leaves were split from)."""
  trainable_params = jax.tree.map(jnp.copy, trainable_params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable_params,
                    opt_state=tx.init(trainable_params), rng=rng)


def classification_loss(logits: jax.Array, labels: jax.Array,
                        weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy. logits [B, K] float, labels [B] int, weights [B] (0 = padding)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return _weighted_mean(losses, weights)


def regression_loss(predictions: jax.Array, targets: jax.Array,
                    weights: jax.Array | None = None) -> jax.Array:
  """Mean squared error. predictions [B, 1] or [B], targets [B]."""
  predictions = predictions.reshape(targets.shape).astype(jnp.float32)
  return _weighted_mean(jnp.square(predictions - targets), weights)


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(values)
  weights = weights.astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def train_step(state: TrainState, frozen: Params, batch: Batch, *,
               apply_fn: Callable[[Params, Batch, jax.Array], jax.Array],
               loss_fn: Callable[[jax.Array, Batch], jax.Array],
               tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of the trainable leaves.

  Args:
    state: the train state (trainable params, optimizer state, step, rng).
    frozen: the frozen leaves (a partial tree; never differentiated).
    batch: a dict of arrays.
    apply_fn: `(full_params, batch, dropout_rng) -> model output` in training mode (the training
      loop passes the experiment's whole training loss here, task kind's loss plus regulariser,
      with a `loss_fn` that returns it).
    loss_fn: `(model output, batch) -> scalar loss`.
    tx: the optimizer `state.opt_state` belongs to.

  Returns:
    The new state, and metrics `loss`, `grad_norm`.
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_of(trainable_params):
    output = apply_fn(trainable.combine(trainable_params, frozen), batch, dropout_rng)
    return loss_fn(output, batch)

  loss, grads = jax.value_and_grad(loss_of)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {'loss': loss, 'grad_norm': optax.global_norm(grads)}

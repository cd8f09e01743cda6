"""The train step and its losses against hand-written float64 references.

A linear model trained by plain SGD: the loss, the gradient (written out for squared error), the
update, the step counter and the per-step dropout key (`fold_in(rng, step)`) are all computed by
hand here, not by `train_step`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapters_jax.train.step import classification_loss, create_train_state, regression_loss, train_step


def _log_softmax64(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_classification_loss_is_the_weighted_mean_cross_entropy():
  logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
  labels = np.array([0, 2, 1, 1])
  per_row = -_log_softmax64(logits)[np.arange(4), labels]
  assert float(classification_loss(logits, labels)) == pytest.approx(per_row.mean(), rel=1e-6)
  weights = np.array([1, 0, 1, 1], np.float32)  # row 1 is padding
  assert float(classification_loss(logits, labels, weights)) == pytest.approx(
      (per_row[0] + per_row[2] + per_row[3]) / 3, rel=1e-6)
  one = np.array([0, 0, 1, 0], np.float32)
  assert float(classification_loss(logits, labels, one)) == pytest.approx(per_row[2], rel=1e-6)
  # An all-padding batch has loss 0, not NaN.
  assert float(classification_loss(logits, labels, np.zeros(4, np.float32))) == 0.0


def test_regression_loss_reads_predictions_of_shape_batch_by_one():
  predictions = np.array([[0.5], [2.0], [-1.0]], np.float32)  # [B, 1]
  targets = np.array([1.0, 1.5, 0.0], np.float32)
  squared = (predictions[:, 0].astype(np.float64) - targets) ** 2
  assert float(regression_loss(predictions, targets)) == pytest.approx(squared.mean(), rel=1e-6)
  weights = np.array([0, 1, 1], np.float32)
  assert float(regression_loss(predictions, targets, weights)) == pytest.approx(squared[1:].mean(), rel=1e-6)


def test_train_step_is_one_sgd_update_of_the_trainable_leaves_only():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  y = rng.normal(size=5).astype(np.float32)
  w0 = rng.normal(size=3).astype(np.float32)
  b = np.float32(0.25)  # frozen
  noise_scale = 1e-2
  key = jax.random.key(3)

  def apply_fn(params, batch, dropout_rng):  # [B]; the dropout key enters the output
    noise = noise_scale * jax.random.normal(dropout_rng, (batch['x'].shape[0],))
    return batch['x'] @ params['w'] + params['b'] + noise

  loss_fn = lambda out, batch: jnp.mean((out - batch['y']) ** 2)
  lr = 0.1
  step = jax.jit(functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=optax.sgd(lr)))
  state = create_train_state({'w': jnp.asarray(w0)}, optax.sgd(lr), key)
  batch = {'x': jnp.asarray(x), 'y': jnp.asarray(y)}
  w = w0.astype(np.float64)
  for s in range(2):
    state, metrics = step(state, {'b': jnp.asarray(b)}, batch)
    noise = noise_scale * np.asarray(jax.random.normal(jax.random.fold_in(key, s), (5,)), np.float64)
    residual = x.astype(np.float64) @ w + b + noise - y
    grad = 2.0 / 5 * x.astype(np.float64).T @ residual
    assert float(metrics['loss']) == pytest.approx(np.mean(residual ** 2), rel=1e-5)
    assert float(metrics['grad_norm']) == pytest.approx(np.linalg.norm(grad), rel=1e-5)
    w = w - lr * grad
    np.testing.assert_allclose(np.asarray(state.params['w']), w, rtol=1e-5, atol=1e-6)
    assert int(state.step) == s + 1
  assert set(state.params) == {'w'}  # the frozen bias is never part of the state


def test_train_step_carries_the_optimizer_state_from_step_to_step():
  # Bug caught: the step returning the old optimizer state (plain SGD has none to lose).
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 2)).astype(np.float32)
  y = rng.normal(size=4).astype(np.float32)
  w0 = rng.normal(size=2).astype(np.float32)
  lr, momentum = 0.05, 0.9
  tx = optax.sgd(lr, momentum=momentum)
  apply_fn = lambda params, batch, dropout_rng: batch['x'] @ params['w']  # [B]
  loss_fn = lambda out, batch: jnp.mean((out - batch['y']) ** 2)
  step = jax.jit(functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx))
  state = create_train_state({'w': jnp.asarray(w0)}, tx, jax.random.key(0))
  w, velocity = w0.astype(np.float64), np.zeros(2)
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  for _ in range(3):
    state, _ = step(state, {}, {'x': jnp.asarray(x), 'y': jnp.asarray(y)})
    velocity = 2.0 / 4 * x64.T @ (x64 @ w - y64) + momentum * velocity  # optax.trace: g + m v
    w = w - lr * velocity
    np.testing.assert_allclose(np.asarray(state.params['w']), w, rtol=1e-5, atol=1e-6)


def test_create_train_state_copies_the_params_it_is_given():
  params = {'w': jnp.ones(3)}
  state = create_train_state(params, optax.sgd(0.1), jax.random.key(0))
  assert int(state.step) == 0 and state.params['w'] is not params['w']
  np.testing.assert_array_equal(np.asarray(state.params['w']), np.ones(3))

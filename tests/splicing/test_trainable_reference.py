"""`trainable`'s optimizer, counts and errors against hand-written references.

AdamW is checked against its update written out in float64 NumPy (global-norm clipping, bias
correction, decoupled weight decay on matrices only); counts and bytes against arithmetic.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax.splicing import trainable
from adapters_jax.train import optimizer


def _adamw_reference(params, grads_per_step, lr, weight_decay, clip_norm, b1=0.9, b2=0.999, eps=1e-8):
  """Float64 AdamW: clip the global norm, Adam moments with bias correction, decay on ndim >= 2."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  for t, grads in enumerate(grads_per_step, start=1):
    grads = {k: np.asarray(g, np.float64) for k, g in grads.items()}
    norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
    if clip_norm and norm > clip_norm:
      grads = {k: g * clip_norm / norm for k, g in grads.items()}
    for k in params:
      m[k] = b1 * m[k] + (1 - b1) * grads[k]
      v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
      update = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      if params[k].ndim >= 2:
        update = update + weight_decay * params[k]
      params[k] = params[k] - lr * update
  return params


@pytest.mark.parametrize('clip_norm', [None, 0.5])
def test_adamw_steps_equal_the_hand_written_update(clip_norm):
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(3, 4)).astype(np.float32),
            'bias': rng.normal(size=4).astype(np.float32)}
  # Gradients large enough that clipping to 0.5 matters, and of different sizes per step.
  steps = [{k: (3.0 / (i + 1)) * rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
           for i in range(3)]
  tx = optimizer.adamw(1e-2, weight_decay=0.1, clip_norm=clip_norm)
  state = tx.init({k: jnp.asarray(v) for k, v in params.items()})
  got = {k: jnp.asarray(v) for k, v in params.items()}
  for grads in steps:
    updates, state = tx.update({k: jnp.asarray(g) for k, g in grads.items()}, state, got)
    got = {k: got[k] + updates[k] for k in got}
  expected = _adamw_reference(params, steps, 1e-2, 0.1, clip_norm)
  for k in params:
    np.testing.assert_allclose(np.asarray(got[k]), expected[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_adamw_uses_the_moment_decays_and_eps_it_is_given():
  # Bug caught: b1, b2 or eps not passed on to optax (its defaults equal ours, so only other
  # values tell).
  rng = np.random.default_rng(2)
  params = {'kernel': rng.normal(size=(2, 3)).astype(np.float32)}
  steps = [{'kernel': (0.2 * (i + 1)) * rng.normal(size=(2, 3)).astype(np.float32)} for i in range(3)]
  tx = optimizer.adamw(1e-1, clip_norm=None, b1=0.5, b2=0.8, eps=0.3)
  got = {'kernel': jnp.asarray(params['kernel'])}
  state = tx.init(got)
  for grads in steps:
    updates, state = tx.update({'kernel': jnp.asarray(grads['kernel'])}, state, got)
    got = {'kernel': got['kernel'] + updates['kernel']}
  expected = _adamw_reference(params, steps, 1e-1, 0.0, None, b1=0.5, b2=0.8, eps=0.3)
  np.testing.assert_allclose(np.asarray(got['kernel']), expected['kernel'], rtol=1e-5, atol=1e-6)


def test_default_clip_norm_is_one():
  rng = np.random.default_rng(1)
  params = {'kernel': rng.normal(size=(2, 2)).astype(np.float32)}
  grads = [{'kernel': np.full((2, 2), 5.0, np.float32)}]
  tx = optimizer.adamw(1e-1)
  state = tx.init({'kernel': jnp.asarray(params['kernel'])})
  updates, _ = tx.update({'kernel': jnp.asarray(grads[0]['kernel'])}, state,
                         {'kernel': jnp.asarray(params['kernel'])})
  expected = _adamw_reference(params, grads, 1e-1, 0.0, 1.0)['kernel'] - params['kernel']
  np.testing.assert_allclose(np.asarray(updates['kernel']), expected, rtol=1e-5, atol=1e-7)


def test_counts_bytes_and_share_by_hand():
  params = {'a': {'kernel': np.zeros((3, 5), np.float32), 'bias': np.zeros(5, np.float32)},
            'b': {'scale': np.zeros(7, np.float16)}}
  mask = trainable.make_mask(params, [('a/bias', True), ('b/.*', True), ('.*', False)])
  counts = trainable.count(params, mask)
  assert (counts.trainable, counts.total) == (5 + 7, 15 + 5 + 7)
  assert counts.percent == pytest.approx(100 * 12 / 27)
  assert str(counts) == '12 trainable of 27 (44.444%)'
  assert trainable.tree_bytes(params) == 15 * 4 + 5 * 4 + 7 * 2
  # A Python scalar leaf (no .nbytes) counts as the NumPy scalar it becomes: a bool is 1 byte.
  assert trainable.tree_bytes({'flag': True, 'x': np.zeros(3, np.float32)}) == 1 + 12
  assert trainable.count_params({}) == 0
  # Paths in insertion order (not sorted), '/'-joined.
  assert trainable.leaf_paths({'b': {'y': 1, 'x': 2}, 'a': 3}) == ['b/y', 'b/x', 'a']
  assert optimizer.decay_mask(params) == {'a': {'kernel': True, 'bias': False}, 'b': {'scale': False}}


def test_uncovered_leaves_are_all_counted_and_the_first_twenty_listed():
  params = {f'p{i:02d}': np.zeros(1) for i in range(23)}
  with pytest.raises(ValueError) as error:
    trainable.make_mask(params, [('p00', True)])
  message = str(error.value)
  assert message.startswith("22 parameter(s) match no trainable rule (add a rule, e.g. ('.*', False)")
  listed = [line.strip() for line in message.splitlines()[1:]]
  assert listed == [f'p{i:02d}' for i in range(1, 21)] + ['...']
  # The first rule that fully matches decides; a partial match does not count.
  mask = trainable.make_mask({'ab': np.zeros(1), 'a': np.zeros(1)}, [('a', False), ('a.*', True)])
  assert mask == {'ab': True, 'a': False}


def test_split_of_a_mask_for_other_params_names_both_sides():
  params = {'x': np.zeros(1), 'y': np.zeros(1)}
  with pytest.raises(ValueError, match=r"not in mask \['y'\], not in params \['z'\]"):
    trainable.split(params, {'x': True, 'z': False})
  # Many differing leaves: the first five of each side, sorted, then the message stops.
  params = {f'p{i}': np.zeros(1) for i in range(7)}
  mask = {f'm{i}': True for i in range(7)}
  with pytest.raises(ValueError) as error:
    trainable.split(params, mask)
  assert str(error.value) == ("Mask and params differ: not in mask ['p0', 'p1', 'p2', 'p3', 'p4'], "
                              "not in params ['m0', 'm1', 'm2', 'm3', 'm4'].")
  with pytest.raises(ValueError, match='Leaf x is in more than one part'):
    trainable.combine({'x': 1}, {'x': 2})

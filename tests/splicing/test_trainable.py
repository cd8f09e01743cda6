"""Masks, split/combine, counts, optimizer state size and the reference train step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from adapters_jax import add_adapter, get_method
from adapters_jax.splicing import trainable
from adapters_jax.train import optimizer
from adapters_jax.train.step import classification_loss, create_train_state, train_step
from tests.tiny_model import TinyClassifier, init_tiny, tiny_batch


def _spliced(method='houlsby', **overrides):
  if method == 'houlsby':
    overrides.setdefault('size', 4)  # the tiny model is 16 wide
  model = TinyClassifier()
  params = init_tiny(model)
  ids, mask = tiny_batch()
  spliced, params = add_adapter(model, params, 'a', get_method(method, **overrides),
                                jax.random.key(1), ids, mask)
  return spliced, params, ids, mask


def test_first_rule_wins_and_uncovered_leaves_are_an_error():
  params = {'a': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}, 'b': {'kernel': jnp.ones(3)}}
  mask = trainable.make_mask(params, [(r'a/bias', False), (r'a/.*', True), (r'.*', False)])
  assert traverse_util.flatten_dict(mask, sep='/') == {'a/kernel': True, 'a/bias': False,
                                                       'b/kernel': False}
  with pytest.raises(ValueError, match='(?s)1 parameter.*b/kernel'):
    trainable.make_mask(params, [(r'a/.*', True)])
  # Whole-name match: 'a' alone does not cover 'a/kernel'.
  with pytest.raises(ValueError, match='3 parameter'):
    trainable.make_mask(params, [(r'a', True)])


def test_houlsby_rules_train_adapter_norms_and_head_only():
  spliced, params, *_ = _spliced()
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('a')]))
  flat = traverse_util.flatten_dict(mask, sep='/')
  trained = sorted(p for p, t in flat.items() if t)
  assert all('/adapters/a/' in p or 'layer_norm' in p or p.startswith('classifier/')
             for p in trained)
  assert 'encoder/layer_0/attention_layer_norm/scale' in trained
  assert 'encoder/layer_0/attention/query/kernel' not in trained
  assert 'embeddings/embedding' not in trained
  # LoRA: no layer norms.
  spliced, params, *_ = _spliced('lora')
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('a')]))
  trained = [p for p, t in traverse_util.flatten_dict(mask, sep='/').items() if t]
  assert not any('layer_norm' in p for p in trained)


def test_split_combine_roundtrip_and_counts():
  spliced, params, *_ = _spliced()
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('a')]))
  train_part, frozen_part = trainable.split(params, mask)
  assert jax.tree.structure(trainable.combine(train_part, frozen_part)) == jax.tree.structure(params)
  counts = trainable.count(params, mask)
  total = sum(np.size(x) for x in jax.tree.leaves(params))
  assert counts.total == total
  assert counts.trainable == sum(np.size(x) for x in jax.tree.leaves(train_part))
  assert counts.trainable + sum(np.size(x) for x in jax.tree.leaves(frozen_part)) == total
  assert 0 < counts.percent < 100
  with pytest.raises(ValueError, match='more than one part'):
    trainable.combine(train_part, train_part)


def _float_numbers(tree):
  return sum(np.size(x) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating))


@pytest.mark.parametrize('method', ['houlsby', 'lora', 'ia3'])
def test_train_step_updates_only_trainable_and_state_is_small(method):
  spliced, params, ids, mask = _spliced(method)
  rules = trainable.adapter_rules([spliced.adapter('a')])
  train_mask = trainable.make_mask(params, rules)
  train_part, frozen = trainable.split(params, train_mask)
  tx = optimizer.adamw(1e-2, weight_decay=0.01)
  state = create_train_state(train_part, tx, jax.random.key(0))
  labels = jnp.array([0, 1, 1])

  def apply_fn(p, batch, rng):
    return spliced.apply(p, batch['ids'], batch['mask'], active='a', deterministic=False,
                         rngs={'dropout': rng})

  loss_fn = lambda logits, batch: classification_loss(logits, batch['labels'])
  step = jax.jit(functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx))
  batch = {'ids': ids, 'mask': mask, 'labels': labels}
  losses = []
  for _ in range(8):
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0]
  # Leaf by leaf against the params before training, with what trains named from the paths alone:
  # the adapter, the head, and (Houlsby) the layer norms change; every other leaf is bit-identical.
  after = traverse_util.flatten_dict(trainable.combine(state.params, frozen), sep='/')
  before = traverse_util.flatten_dict(params, sep='/')
  assert after.keys() == before.keys()
  for path, value in before.items():
    trains = ('/adapters/a/' in path or path.startswith('classifier/')
              or (method == 'houlsby' and 'layer_norm' in path))
    assert np.array_equal(np.asarray(after[path]), np.asarray(value)) != trains, path
  # Optimizer state: exactly two moments per trainable number, nothing for frozen leaves.
  n_trainable = trainable.count_params(state.params)
  assert _float_numbers(state.opt_state) == 2 * n_trainable
  assert n_trainable < trainable.count_params(frozen)


def test_optax_partition_on_full_tree_keeps_no_frozen_state():
  spliced, params, ids, mask = _spliced('lora')
  train_mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('a')]))
  labels = jax.tree.map(lambda train: 'trainable' if train else 'frozen', train_mask)
  tx = optax.partition({'trainable': optimizer.adamw(1e-2), 'frozen': optax.set_to_zero()}, labels)
  opt_state = tx.init(params)
  n_trainable = trainable.count(params, train_mask).trainable
  assert _float_numbers(opt_state) == 2 * n_trainable
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, opt_state, params)
  flat_updates = traverse_util.flatten_dict(updates, sep='/')
  flat_mask = traverse_util.flatten_dict(train_mask, sep='/')
  for path, update in flat_updates.items():
    assert bool(jnp.any(update != 0)) == flat_mask[path], path


def test_weight_decay_skips_biases_and_vectors():
  tree = {'kernel': jnp.full((2, 2), 3.0), 'bias': jnp.full(2, 3.0), 'scale': jnp.full(2, 3.0)}
  assert optimizer.decay_mask(tree) == {'kernel': True, 'bias': False, 'scale': False}
  lr, decay = 0.1, 0.5
  tx = optimizer.adamw(lr, weight_decay=decay, clip_norm=None)
  state = tx.init(tree)
  zero = jax.tree.map(jnp.zeros_like, tree)
  updates, _ = tx.update(zero, state, tree)
  # Zero gradients: Adam's step is 0, so what moves is decoupled decay alone, -lr * decay * w, on
  # matrices only.
  np.testing.assert_allclose(np.asarray(updates['kernel']), np.full((2, 2), -lr * decay * 3.0),
                             rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(updates['bias']), np.zeros(2))
  np.testing.assert_array_equal(np.asarray(updates['scale']), np.zeros(2))

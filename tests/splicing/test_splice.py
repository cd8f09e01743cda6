"""Splicing by tree surgery + interception, on a tiny model (plain and nn.scan) and on HF FlaxBert."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax import (
  CompositionError,
  SiteMatchError,
  adapter_leaves,
  add_adapter,
  get_method,
  merge_adapter,
  remove_adapter,
  unmerge_adapter,
)
from tests.tiny_model import TinyClassifier, init_tiny, perturb_adapter, tiny_batch

ZERO_INIT = {
    'houlsby-zero': dict(name='houlsby', init='zero'),
    'pfeiffer': dict(name='pfeiffer'),
    'parallel': dict(name='parallel'),
    'lora': dict(name='lora'),
    'ia3': dict(name='ia3'),
    'compacter': dict(name='compacter', n=2, size=4),
    'compacter++': dict(name='compacter++', n=2, size=4),
}


_perturb = perturb_adapter


def _method(spec):
  spec = dict(spec)
  return get_method(spec.pop('name'), **spec)


@pytest.fixture(params=[False, True], ids=['plain', 'scan'])
def tiny(request):
  model = TinyClassifier(scan=request.param)
  return model, init_tiny(model), tiny_batch()


@pytest.mark.parametrize('method', list(ZERO_INIT))
def test_zero_init_splice_equals_base_exactly(tiny, method):
  model, params, (ids, mask) = tiny
  spliced, new_params = add_adapter(model, params, 'a', _method(ZERO_INIT[method]),
                                    jax.random.key(1), ids, mask)
  base = model.apply({'params': params}, ids, mask)
  out = spliced.apply(new_params, ids, mask, active='a')
  np.testing.assert_array_equal(np.asarray(out), np.asarray(base))
  # ... and the adapter is really on the path: perturbing its leaves changes the output.
  moved = spliced.apply(_perturb(new_params, 'a'), ids, mask, active='a')
  assert float(jnp.max(jnp.abs(moved - base))) > 1e-2


def test_houlsby_near_identity_init_is_close_to_base(tiny):
  model, params, (ids, mask) = tiny
  spliced, new_params = add_adapter(model, params, 'a', get_method('houlsby'), jax.random.key(1),
                                    ids, mask)
  base = model.apply({'params': params}, ids, mask)
  out = spliced.apply(new_params, ids, mask, active='a')
  diff = float(jnp.max(jnp.abs(out - base)))
  assert 0 < diff < 0.05 * float(jnp.max(jnp.abs(base)))


def test_grafted_tree_layout_and_scan_axis(tiny):
  model, params, (ids, mask) = tiny
  spliced, new_params = add_adapter(model, params, 'a', get_method('houlsby', size=4),
                                    jax.random.key(1), ids, mask)
  paths = sorted(adapter_leaves(new_params, 'a'))
  if model.scan:
    assert [s.path for s in spliced.adapter('a').sites] == [
        'encoder/layers/attention/output', 'encoder/layers/ffn/output']
    kernel = adapter_leaves(new_params, 'a')['encoder/layers/attention/output/adapters/a/down/kernel']
    assert kernel.shape == (2, 16, 4)  # one adapter per scanned layer
  else:
    assert 'encoder/layer_1/ffn/output/adapters/a/up/kernel' in paths
    assert len(spliced.adapter('a').sites) == 4
  # Base leaves are untouched by the graft.
  base_flat = traverse_util.flatten_dict(params, sep='/')
  new_flat = traverse_util.flatten_dict(new_params, sep='/')
  for path, value in base_flat.items():
    assert new_flat[path] is value


def test_active_is_chosen_at_apply_time(tiny):
  model, params, (ids, mask) = tiny
  spliced, p = add_adapter(model, params, 'a', get_method('houlsby', size=4), jax.random.key(1),
                           ids, mask)
  spliced, p = add_adapter(spliced, p, 'b', get_method('lora'), jax.random.key(2), ids, mask)
  p = _perturb(p, 'b')
  base = model.apply({'params': params}, ids, mask)
  np.testing.assert_array_equal(np.asarray(spliced.apply(p, ids, mask)), np.asarray(base))
  out_a = spliced.apply(p, ids, mask, active='a')
  out_b = spliced.apply(p, ids, mask, active='b')
  out_ab = spliced.apply(p, ids, mask, active=('a', 'b'))
  assert not np.allclose(out_a, out_b)
  assert not np.allclose(out_ab, out_a) and not np.allclose(out_ab, out_b)
  # Only-b equals a splice of b alone.
  solo, q = add_adapter(model, params, 'b', get_method('lora'), jax.random.key(2), ids, mask)
  q = _perturb(q, 'b')
  np.testing.assert_allclose(np.asarray(solo.apply(q, ids, mask, active='b')), np.asarray(out_b),
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(KeyError, match="spliced adapters: \\['a', 'b'\\]"):
    spliced.apply(p, ids, mask, active='c')
  spliced2, p2 = remove_adapter(spliced, p, 'a')
  assert spliced2.names == ('b',) and not adapter_leaves(p2, 'a')


def test_unmatched_pattern_lists_candidate_paths(tiny):
  model, params, (ids, mask) = tiny
  method = get_method('lora', sites=((r'.*/attention/qeury', 'parallel'),))
  with pytest.raises(SiteMatchError, match='(?s)could have meant:.*attention/query'):
    add_adapter(model, params, 'a', method, jax.random.key(0), ids, mask)


def test_leave_out_layers():
  model = TinyClassifier()
  params = init_tiny(model)
  ids, mask = tiny_batch()
  spliced, p = add_adapter(model, params, 'a', get_method('pfeiffer', leave_out=(0,)),
                           jax.random.key(0), ids, mask)
  assert [s.path for s in spliced.adapter('a').sites] == ['encoder/layer_1/ffn/output']


@pytest.mark.parametrize('name', ['lora', 'ia3'])
def test_merge_and_unmerge(tiny, name):
  model, params, (ids, mask) = tiny
  spliced, p = add_adapter(model, params, 'a', get_method(name), jax.random.key(1), ids, mask)
  p = _perturb(p, 'a', scale=0.2)
  with_adapter = spliced.apply(p, ids, mask, active='a')
  merged_spliced, merged = merge_adapter(spliced, p, 'a')
  # The merged base alone computes what base + adapter did.
  np.testing.assert_allclose(np.asarray(merged_spliced.apply(merged, ids, mask)),
                             np.asarray(with_adapter), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='merged'):
    merged_spliced.apply(merged, ids, mask, active='a')
  back_spliced, back = unmerge_adapter(merged_spliced, merged, 'a')
  orig = traverse_util.flatten_dict(params, sep='/')
  restored = traverse_util.flatten_dict(back, sep='/')
  for path, value in orig.items():
    np.testing.assert_allclose(np.asarray(restored[path]), np.asarray(value), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(back_spliced.apply(back, ids, mask, active='a')),
                             np.asarray(with_adapter), rtol=1e-5, atol=1e-6)


def test_bottleneck_cannot_merge(tiny):
  model, params, (ids, mask) = tiny
  spliced, p = add_adapter(model, params, 'a', get_method('pfeiffer'), jax.random.key(1), ids, mask)
  with pytest.raises(NotImplementedError, match='only LoRA, VeRA, DoRA and \\(IA\\)3'):
    merge_adapter(spliced, p, 'a')


def test_adapter_dropout_follows_deterministic(tiny):
  model, params, (ids, mask) = tiny
  spliced, p = add_adapter(model, params, 'a', get_method('lora', dropout=0.5), jax.random.key(1),
                           ids, mask)
  p = _perturb(p, 'a')
  eval_a = spliced.apply(p, ids, mask, active='a', deterministic=True)
  eval_b = spliced.apply(p, ids, mask, active='a', deterministic=True)
  np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
  train_1 = spliced.apply(p, ids, mask, active='a', deterministic=False,
                          rngs={'dropout': jax.random.key(1)})
  train_2 = spliced.apply(p, ids, mask, active='a', deterministic=False,
                          rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train_1, train_2)


def test_a_name_the_params_already_hold_is_refused_or_replaced(tiny):
  model, params, (ids, mask) = tiny
  _, trained = add_adapter(model, params, 'a', get_method('houlsby', size=4), jax.random.key(1),
                           ids, mask)
  trained = _perturb(trained, 'a')
  # A plain host (no Spliced record of 'a'), params that hold the trained 'a': the same method
  # would silently re-initialise it, another method would mix two methods' leaves under one name.
  for method in (get_method('houlsby', size=4), get_method('lora')):
    with pytest.raises(ValueError) as error:
      add_adapter(model, trained, 'a', method, jax.random.key(2), ids, mask)
    assert str(error.value) == (
        "An adapter named 'a' exists: the params already hold its leaves (spliced: [], in the "
        "params: ['a']). Pass replace=True to drop its leaves and initialise a new one, or choose "
        'another name.')
  spliced, replaced = add_adapter(model, trained, 'a', get_method('lora'), jax.random.key(2), ids,
                                  mask, replace=True)
  assert spliced.names == ('a',)
  leaf_names = {path.rsplit('/', 1)[1] for path in adapter_leaves(replaced, 'a')}
  assert leaf_names == {'lora_a', 'lora_b'}  # no bottleneck leaf left under 'a'
  # A fresh LoRA (B = 0) on the untouched base computes the base model.
  np.testing.assert_array_equal(np.asarray(spliced.apply(replaced, ids, mask, active='a')),
                                np.asarray(model.apply({'params': params}, ids, mask)))


def test_lora_dropout_is_the_adapters_own_and_zero_rate_has_none(tiny):
  """With the same dropout key the host's own dropout masks are the same, so a LoRA adapter with
  dropout 0.5 and one with dropout 0.0 (equal weights) differ in training only by the adapter's
  dropout, and not at all in evaluation."""
  model, params, (ids, mask) = tiny
  outputs = {}
  for rate in (0.0, 0.5):
    spliced, p = add_adapter(model, params, 'a', get_method('lora', dropout=rate), jax.random.key(1),
                             ids, mask)
    p = _perturb(p, 'a')
    outputs[rate] = [np.asarray(spliced.apply(p, ids, mask, active='a', deterministic=d,
                                              rngs=None if d else {'dropout': jax.random.key(3)}))
                     for d in (True, False)]
  np.testing.assert_array_equal(outputs[0.0][0], outputs[0.5][0])
  assert np.abs(outputs[0.0][1] - outputs[0.5][1]).max() > 1e-4


def test_adapter_drop_on_a_scanned_model_names_the_fix():
  model = TinyClassifier(scan=True)
  params = init_tiny(model)
  ids, mask = tiny_batch(vocab=model.vocab)
  spliced, p = add_adapter(model, params, 'a', get_method('houlsby'), jax.random.key(1), ids, mask)
  with pytest.raises(CompositionError, match='skip_layers \\(AdapterDrop\\) needs unscanned layers; '
                                      'encoder/layers/.* is under nn.scan. Load the model with '
                                      'scan_layers=False.'):
    spliced.apply(p, ids, mask, active='a', skip_layers=1)

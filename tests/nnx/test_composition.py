"""Parallel, AdapterFusion and AdapterDrop on NNX models, against float64 numpy written here.

At the decoder's `lm_head` the adapted forward is written out by hand (as in test_site_math):
its input `Decoder.hidden(ids)` is untouched by adapters and its output is the model's output.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adapters_jax.methods import adapter_drop, fusion, get_method
from adapters_jax.nnx import checkpoint, splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.nnx.fusion import add_fusion, fusion_regularization
from adapters_jax.nnx.trainable import trained_filter
from adapters_jax.splicing.composition import CompositionError, Fuse, Parallel, PerExample, Stack
from tests.nnx import hosts

HEAD = 'lm_head'
HOULSBY = get_method('houlsby', size=5, sites=((HEAD, 'output'),))


def _host_with(*names, method=HOULSBY, layers=1):
  model = hosts.Decoder(nnx.Rngs(0), layers=layers)
  ids = hosts.sample_ids()
  for index, name in enumerate(names):
    splice.add_adapter(model, name, method, jax.random.key(index), ids)
  hosts.randomize(model, AdapterParam, seed=3)
  return model, ids


def _arrays(tree):
  return {k: _arrays(v) if isinstance(v, nnx.Dict) else np.asarray(v[...], np.float64)
          for k, v in tree.items()}


def _gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _delta(p, y):
  """The bottleneck without its residual: up(gelu(down(y))), float64."""
  return _gelu(y @ p['down']['kernel'] + p['down']['bias']) @ p['up']['kernel'] + p['up']['bias']


def _head_output(model, ids):
  x = np.asarray(model.hidden(ids), np.float64)
  return x @ np.asarray(model.lm_head.kernel[...], np.float64) + np.asarray(
      model.lm_head.bias[...], np.float64)  # [batch, length, vocab]


def test_parallel_runs_every_branch_on_the_whole_batch():
  model, ids = _host_with('a', 'b')
  pa, pb = (_arrays(model.lm_head.adapters[n]) for n in 'ab')
  y = _head_output(model, ids)
  splice.set_active(model, Parallel('a', None, Stack('a', 'b')))
  out = splice.run_parallel(model, ids)
  assert out.shape == (3,) + y.shape
  ya = y + _delta(pa, y)
  for got, want in zip(out, (ya, y, ya + _delta(pb, ya)), strict=True):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-5)
  # Under nnx.jit too, and a plain call says how to run it.
  jitted = nnx.jit(lambda model, ids: splice.run_parallel(model, ids))
  np.testing.assert_allclose(jitted(model, ids), out, rtol=1e-6, atol=1e-6)
  with pytest.raises(CompositionError, match='run_parallel'):
    model(ids)
  splice.set_active(model, 'a')
  with pytest.raises(CompositionError, match='Parallel'):
    splice.run_parallel(model, ids)


def _fusion_reference(f, deltas, y, temperature=1.0):
  """AdapterFusion (Pfeiffer et al. 2021) in float64: y + sum_i softmax_i(q.k_i / T) v_i."""
  q = y @ f['query']['kernel'] + f['query']['bias']                      # [B, L, F]
  k = deltas @ f['key']['kernel'] + f['key']['bias']                     # [B, L, K, F]
  v = deltas @ f['value']['kernel']                                      # [B, L, K, F]
  scores = np.einsum('blf,blkf->blk', q, k) / temperature
  a = np.exp(scores - scores.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  return y + np.einsum('blk,blkf->blf', a, v)


def test_fusion_attends_over_the_adapters_deltas():
  model, ids = _host_with('a', 'b')
  spec = add_fusion(model, ('a', 'b'), jax.random.key(7), fusion('a', 'b', dropout=0.0,
                                                                  temperature=2.0))
  assert spec.name == 'a,b' and [s.path for s in spec.sites] == [HEAD]
  splice.set_active(model, Fuse('a', 'b'))
  at_init = np.asarray(model(ids), np.float64)
  hosts.randomize(model, AdapterParam, seed=4, scale=0.1)  # fusion layers off their init too
  pa, pb, f = (_arrays(model.lm_head.adapters[n]) for n in ('a', 'b', 'a,b'))
  y = _head_output(model, ids)
  want = _fusion_reference(f, np.stack([_delta(pa, y), _delta(pb, y)], axis=-2), y, 2.0)
  got = np.asarray(model(ids), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.abs(got - at_init).max() > 1e-3
  splice.set_active(model, 'a,b')  # the fusion's name means the same
  np.testing.assert_array_equal(model(ids), got)
  # Inside a Stack and a Parallel branch, as on Linen models.
  splice.set_active(model, Parallel(None, Stack(Fuse('a', 'b'))))
  np.testing.assert_allclose(np.asarray(splice.run_parallel(model, ids)[1], np.float64), want,
                             rtol=1e-5, atol=1e-5)


def test_fusion_trains_alone_with_its_regularizer():
  model, ids = _host_with('a', 'b')
  add_fusion(model, ('a', 'b'), jax.random.key(7), fusion('a', 'b', dropout=0.0))
  splice.set_active(model, 'a,b')
  value = _arrays(model.lm_head.adapters['a,b'])['value']['kernel']
  want_reg = 0.01 * np.sum(np.square(value - np.eye(value.shape[0])))
  np.testing.assert_allclose(float(fusion_regularization(model, 'a,b')), want_reg, rtol=1e-5)
  wrt = trained_filter(model, adapters=('a,b',))

  def loss(model):
    return jnp.mean(model(ids) ** 2) + fusion_regularization(model, 'a,b')

  grads = nnx.grad(loss, argnums=nnx.DiffState(0, wrt))(model)
  paths = {'/'.join(map(str, p)) for p, _ in nnx.to_flat_state(grads)}
  assert paths == {f'lm_head/adapters/a,b/{leaf}' for leaf in (
      'query/kernel', 'query/bias', 'key/kernel', 'key/bias', 'value/kernel')}
  with pytest.raises(ValueError, match='dropout=0.0'):
    add_fusion(model, ('a', 'b'), jax.random.key(0), name='other')
  with pytest.raises(ValueError, match='already spliced'):
    add_fusion(model, ('a', 'b'), jax.random.key(0), fusion('a', 'b', dropout=0.0))
  lora = get_method('lora', sites=((HEAD, 'parallel'),))
  splice.add_adapter(model, 'l', lora, jax.random.key(5), ids)
  with pytest.raises(ValueError, match='bottleneck'):
    add_fusion(model, ('a', 'l'), jax.random.key(0), fusion('a', 'l', dropout=0.0))


def test_a_fusion_checkpoint_restores_over_restored_adapters(tmp_path):
  model, ids = _host_with('a', 'b')
  add_fusion(model, ('a', 'b'), jax.random.key(7), fusion('a', 'b', dropout=0.0))
  hosts.randomize(model, AdapterParam, seed=4, scale=0.1)
  splice.set_active(model, 'a,b')
  fresh = hosts.Decoder(nnx.Rngs(0), layers=1)
  for name in ('a', 'b', 'a,b'):
    directory = checkpoint.save_adapter(tmp_path / name, model, name)
    checkpoint.restore_adapter(directory, fresh, ids)
  splice.set_active(fresh, Fuse('a', 'b'))
  np.testing.assert_array_equal(fresh(ids), model(ids))


FFN_DOWN = r'blocks/\d+/mlp/layers/2'


def test_skip_layers_runs_no_adapter_in_the_first_blocks():
  method = get_method('houlsby', size=5, sites=((FFN_DOWN, 'output'),))
  model, ids = _host_with('a', method=method, layers=3)
  splice.set_active(model, 'a', skip_layers=2)
  dropped = model(ids)
  assert splice.skipped_layers(model) == (0, 1)
  # The reference: the adapters of blocks 0 and 1 made the identity (their `up` zeroed).
  reference = hosts.Decoder(nnx.Rngs(0), layers=3)
  splice.add_adapter(reference, 'a', method, jax.random.key(0), ids)
  nnx.update(reference, nnx.state(model, AdapterParam))
  for block in (0, 1):
    up = reference.blocks[block].mlp.layers[2].adapters['a']['up']
    up['kernel'][...] = jnp.zeros_like(up['kernel'][...])
    up['bias'][...] = jnp.zeros_like(up['bias'][...])
  splice.set_active(reference, 'a')
  np.testing.assert_allclose(dropped, reference(ids), rtol=1e-6, atol=1e-6)
  splice.set_active(model, 'a')
  assert float(jnp.abs(model(ids) - dropped).max()) > 1e-3
  # A sequence names blocks; PerExample rows follow it too; `activated` restores the choice.
  with splice.activated(model, PerExample('a', None), skip_layers=(0, 1)), \
      splice.adapter_index(model, jnp.array([0, 0])):
    np.testing.assert_allclose(model(ids), dropped, rtol=1e-6, atol=1e-6)
  assert (splice.active(model), splice.skipped_layers(model)) == ('a', ())
  head = get_method('pfeiffer', sites=((HEAD, 'output'),))
  splice.add_adapter(model, 'h', head, jax.random.key(1), ids)
  with pytest.raises(CompositionError, match='block'):
    splice.set_active(model, 'h', skip_layers=1)  # lm_head is in no block: never ignored silently


def test_adapter_drop_trains_nothing_in_the_dropped_blocks():
  method = get_method('houlsby', sites=((FFN_DOWN, 'output'),),
                      train_also=(r'blocks/\d+/mlp_norm/scale',))
  dropped = adapter_drop(method, range(2), block_prefix='blocks/')
  model = hosts.Decoder(nnx.Rngs(0), layers=3)
  ids = hosts.sample_ids()
  spec = splice.add_adapter(model, 'a', dropped, jax.random.key(0), ids)
  assert [site.path for site in spec.sites] == ['blocks/2/mlp/layers/2']
  splice.set_active(model, 'a')
  wrt = trained_filter(model)
  grads = nnx.grad(lambda m: jnp.mean(m(ids) ** 2), argnums=nnx.DiffState(0, wrt))(model)
  paths = sorted('/'.join(map(str, p)) for p, _ in nnx.to_flat_state(grads))
  assert [p for p in paths if 'adapters' not in p] == ['blocks/2/mlp_norm/scale']
  assert all(p.startswith('blocks/2/') for p in paths)

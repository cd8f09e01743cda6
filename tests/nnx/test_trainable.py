"""`trained_filter`: the adapters plus what the method trains with them, as an NNX filter."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from adapters_jax.methods import get_method
from adapters_jax.nnx import splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.nnx.trainable import trained_filter
from tests.nnx import hosts


def _paths(state):
  return sorted('/'.join(str(k) for k in path) for path, _ in nnx.to_flat_state(state))


def test_houlsby_trains_its_adapters_its_layer_norms_and_the_head_and_nothing_else():
  model = hosts.Encoder(nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  method = get_method('houlsby', sites=hosts.preset_sites('encoder', 'houlsby'),
                      train_also=(r'layers/\d+/norm\d/(scale|bias)',))
  splice.add_adapter(model, 'h', method, jax.random.key(0), ids)
  splice.set_active(model, 'h')
  wrt = trained_filter(model, extra=(r'classifier/.*',))
  norms_and_head = ['classifier/bias', 'classifier/kernel', 'layers/0/norm1/bias',
                    'layers/0/norm1/scale', 'layers/0/norm2/bias', 'layers/0/norm2/scale']
  assert _paths(nnx.state(model, wrt)) == sorted(_paths(nnx.state(model, AdapterParam))
                                                 + norms_and_head)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=wrt)
  frozen = nnx.state(model, nnx.Not(wrt))
  norm_before = np.asarray(model.layers[0].norm1.scale[...])
  grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(
      m(ids), np.array([0, 1])).mean(), argnums=nnx.DiffState(0, wrt))(model)
  optimizer.update(model, grads)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Not(wrt)), frozen)
  assert not np.array_equal(model.layers[0].norm1.scale[...], norm_before)  # the norms trained


def test_a_regex_that_matches_nothing_is_refused():
  model = hosts.Encoder(nnx.Rngs(0), layers=1)
  # The preset's layer-norm regex names Linen backbones' `LayerNorm_0` / `layer_norm`, not `norm1`.
  splice.add_adapter(model, 'h', get_method('houlsby', sites=hosts.preset_sites('encoder', 'houlsby')),
                     jax.random.key(0), hosts.sample_ids())
  with pytest.raises(ValueError, match='matches no param.*train_also'):
    trained_filter(model)

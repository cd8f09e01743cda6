"""Splicing the Linen presets into NNX models: identity at zero init, what trains, what runs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from adapters_jax.methods import PRESETS, get_method
from adapters_jax.nnx import splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.splicing.composition import CompositionError, Parallel, Stack
from adapters_jax.splicing.sites import SiteMatchError
from adapters_jax.splicing.tree import is_adapter_path
from tests.nnx import hosts

FIT, NNX_PRESETS = hosts.FIT, hosts.NNX_PRESETS


def _method(host, preset):
  return get_method(preset, sites=hosts.preset_sites(host, preset), **FIT.get(preset, {}))


def _flat_paths(state):
  return ['/'.join(str(k) for k in path) for path, _ in nnx.to_flat_state(state)]


@pytest.mark.parametrize('host', sorted(hosts.HOSTS))
def test_every_preset_starts_as_the_base_model_and_then_changes_it(host):
  model = hosts.HOSTS[host](nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  base = model(ids)
  for index, preset in enumerate(NNX_PRESETS):
    splice.add_adapter(model, preset, _method(host, preset), jax.random.key(index), ids)
    splice.set_active(model, preset)
    np.testing.assert_array_equal(model(ids), base, err_msg=preset)
  # The identity is not vacuous: with their leaves perturbed, every adapter changes the output.
  hosts.randomize(model, AdapterParam, seed=1)
  for preset in NNX_PRESETS:
    splice.set_active(model, preset)
    assert float(jnp.abs(model(ids) - base).max()) > 1e-3, preset
  splice.set_active(model, None)
  np.testing.assert_array_equal(model(ids), base)


def test_methods_that_extend_keys_or_the_sequence_are_refused():
  model = hosts.Encoder(nnx.Rngs(0))
  assert sorted(PRESETS) != NNX_PRESETS
  assert 'dora' in NNX_PRESETS
  with pytest.raises(ValueError, match='keys_values'):
    splice.add_adapter(model, 'a', get_method('prefix_tuning'), jax.random.key(0),
                       hosts.sample_ids())
  with pytest.raises(ValueError, match='lengthens the input sequence'):
    splice.add_adapter(model, 'a', get_method('prompt_tuning'), jax.random.key(0),
                       hosts.sample_ids())


def test_splicing_keeps_the_base_paths_and_puts_adapters_under_their_sites():
  model = hosts.Encoder(nnx.Rngs(0))
  before = _flat_paths(nnx.state(model, nnx.Param))
  splice.add_adapter(model, 'a', _method('encoder', 'houlsby'), jax.random.key(0), hosts.sample_ids())
  after = _flat_paths(nnx.state(model, nnx.Param))
  assert [p for p in after if not is_adapter_path(p)] == before
  adapter_paths = _flat_paths(nnx.state(model, AdapterParam))
  assert 'layers/1/mlp/down/adapters/a/up/kernel' in adapter_paths
  assert all(is_adapter_path(p, 'a') for p in adapter_paths)
  assert isinstance(model.layers[1].mlp.down, nnx.Linear)  # host code that checks types still works


def test_gradients_and_optimizer_state_reach_only_adapter_leaves():
  model = hosts.Decoder(nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  splice.add_adapter(model, 'lora', _method('decoder', 'lora'), jax.random.key(0), ids)
  splice.set_active(model, 'lora')
  adapter_paths = _flat_paths(nnx.state(model, AdapterParam))
  assert len(adapter_paths) == 2 * 2  # (query, value) x (lora_a, lora_b)

  def loss(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(ids)[:, :-1], ids[:, 1:]).mean()

  grads = nnx.grad(loss, argnums=nnx.DiffState(0, AdapterParam))(model)
  assert sorted(_flat_paths(grads)) == sorted(adapter_paths)
  # B starts at zero, so only B gets a gradient at the first step (A's is B-weighted).
  for path, value in nnx.to_flat_state(grads):
    assert (float(jnp.abs(value[...]).max()) > 0) == (path[-1] == 'lora_b'), path

  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=AdapterParam)
  moments = [leaf for leaf in jax.tree.leaves(optimizer.opt_state) if jnp.ndim(leaf)]
  assert sum(leaf.size for leaf in moments) == 2 * sum(
      v[...].size for _, v in nnx.to_flat_state(nnx.state(model, AdapterParam)))
  frozen = nnx.state(model, nnx.Not(AdapterParam))
  optimizer.update(model, grads)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Not(AdapterParam)), frozen)


def test_a_new_choice_is_traced_again_under_nnx_jit():
  model = hosts.Decoder(nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  splice.add_adapter(model, 'a', _method('decoder', 'lora'), jax.random.key(0), ids)
  hosts.randomize(model, AdapterParam, seed=2)
  forward = nnx.jit(lambda model, ids: model(ids))
  base = forward(model, ids)
  splice.set_active(model, 'a')
  adapted = forward(model, ids)
  assert float(jnp.abs(adapted - base).max()) > 1e-3  # not the cached base trace
  with splice.activated(model, None):
    np.testing.assert_allclose(forward(model, ids), base, rtol=0, atol=0)
  assert splice.active(model) == 'a'


def test_leave_out_reads_the_blocks_from_the_graph():
  model = hosts.Encoder(nnx.Rngs(0))
  spec = splice.add_adapter(model, 'a', get_method('pfeiffer', sites=hosts.preset_sites(
      'encoder', 'pfeiffer'), leave_out=(0,)), jax.random.key(0), hosts.sample_ids())
  assert [site.path for site in spec.sites] == ['layers/1/mlp/down']


def test_errors_name_the_fix():
  model = hosts.Encoder(nnx.Rngs(0))
  ids = hosts.sample_ids()
  with pytest.raises(SiteMatchError, match='layers/0/attn/out'):
    splice.add_adapter(model, 'a', get_method('pfeiffer', sites=((r'layers/\d+/attention/out',
                                                                    'output'),)),
                       jax.random.key(0), ids)
  assert splice.adapted_sites(model) == {}  # nothing half-spliced
  with pytest.raises(ValueError, match='dropout=0.0'):  # never trained without it silently
    splice.add_adapter(model, 'a', get_method('lora', dropout=0.1, sites=hosts.preset_sites(
        'encoder', 'lora')), jax.random.key(0), ids)
  splice.add_adapter(model, 'a', _method('encoder', 'pfeiffer'), jax.random.key(0), ids)
  with pytest.raises(ValueError, match='spliced already'):
    splice.add_adapter(model, 'a', _method('encoder', 'pfeiffer'), jax.random.key(0), ids)
  with pytest.raises(KeyError, match="spliced adapters: \\['a'\\]"):
    splice.set_active(model, 'b')
  with pytest.raises(CompositionError, match='outermost'):
    splice.set_active(model, Stack('a', Parallel('a', None)))
  splice.remove_adapter(model, 'a')
  assert splice.adapted_sites(model) == {}
  assert type(model.layers[0].mlp.down) is nnx.Linear  # the site got its own class back

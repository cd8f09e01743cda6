"""VeRA: the site formula against float64 NumPy and against PEFT's own VeRA layer, the shared frozen
projections, and the splice checks every LoRA-family method passes."""

import json

import jax
import numpy as np
import peft
import pytest
import torch
from flax import traverse_util

from adapters_jax import adapter_leaves, get_method
from adapters_jax.methods import VeRA, method_from_dict
from adapters_jax.methods.vera import vera_projections
from adapters_jax.splicing import trainable
from tests.methods import splice_checks

METHOD = get_method('vera', rank=8, projection_seed=5)


def _module_and_params(in_features=5, out_features=6, rank=3):
  module = VeRA(out_features=out_features, rank=rank, projection_seed=4)
  x = jax.random.normal(jax.random.key(0), (2, 3, in_features))
  params = module.init(jax.random.key(1), x)['params']
  trained = {'lambda_d': jax.random.normal(jax.random.key(2), (rank,)),
             'lambda_b': jax.random.normal(jax.random.key(3), (out_features,))}
  return module, x, params, trained


def test_init_is_d_initial_and_zero_b_so_the_term_is_zero():
  module, x, params, _ = _module_and_params()
  assert set(params) == {'lambda_d', 'lambda_b'}  # A and B are no params
  np.testing.assert_array_equal(np.asarray(params['lambda_d']), np.full(3, 0.1, np.float32))
  np.testing.assert_array_equal(np.asarray(params['lambda_b']), np.zeros(6, np.float32))
  np.testing.assert_array_equal(np.asarray(module.apply({'params': params}, x)), 0.0)


def test_forward_matches_float64_formula():
  module, x, _, trained = _module_and_params()
  a, b = (np.asarray(m, np.float64) for m in vera_projections(4, 5, 6, 3))
  d, lam_b = (np.asarray(trained[k], np.float64) for k in ('lambda_d', 'lambda_b'))
  want = ((np.asarray(x, np.float64) @ a) * d) @ b * lam_b
  np.testing.assert_allclose(np.asarray(module.apply({'params': trained}, x)), want, rtol=1e-5,
                             atol=1e-6)


def test_projections_are_kaiming_uniform_and_narrow_sites_see_slices():
  a, b = (np.asarray(m, np.float64) for m in vera_projections(0, 64, 48, 16))
  assert a.shape == (64, 16) and b.shape == (16, 48)
  assert np.abs(a).max() <= np.sqrt(6 / 64) and np.abs(b).max() <= np.sqrt(6 / 16)
  assert np.abs(a).max() > 0.9 * np.sqrt(6 / 64)  # spans the range
  a_narrow, b_narrow = (np.asarray(m, np.float64) for m in vera_projections(0, 32, 24, 16))
  # Same random numbers (a slice), A scaled to its own fan-in.
  np.testing.assert_allclose(a_narrow / np.sqrt(6 / 32), a[:32] / np.sqrt(6 / 64), rtol=1e-6)
  np.testing.assert_allclose(b_narrow, b[:, :24], rtol=1e-6)
  other_seed = np.asarray(vera_projections(1, 64, 48, 16)[0])
  assert np.abs(other_seed - a).max() > 0.1


def test_forward_matches_peft_vera_layer():
  in_features, out_features, rank = 5, 6, 3
  module, x, _, trained = _module_and_params(in_features, out_features, rank)
  torch.manual_seed(0)
  host = torch.nn.Sequential()
  host.add_module('query', torch.nn.Linear(in_features, out_features))
  model = peft.get_peft_model(host, peft.VeraConfig(r=rank, target_modules=['query']))
  layer = model.base_model.model.query
  a, b = vera_projections(4, in_features, out_features, rank)

  def tensor(v):
    return torch.tensor(np.asarray(v, np.float32))

  with torch.no_grad():
    layer.vera_A['default'].copy_(tensor(a).T)  # [r, in]
    layer.vera_B['default'].copy_(tensor(b).T)  # [out, r]
    layer.vera_lambda_d['default'].copy_(tensor(trained['lambda_d']))
    layer.vera_lambda_b['default'].copy_(tensor(trained['lambda_b']))
    theirs = layer(tensor(x)).numpy()
    base = layer.base_layer(tensor(x)).numpy()
  ours = base + np.asarray(module.apply({'params': trained}, x))
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  assert np.abs(theirs - base).max() > 1e-2


def test_options_by_name_and_errors():
  method = get_method('vera', rank=16, projection_seed=3, d_initial=0.5)
  assert (method.rank, method.projection_seed, method.d_initial) == (16, 3, 0.5)
  with pytest.raises(ValueError, match='valid options'):
    get_method('vera', r=4)
  with pytest.raises(ValueError, match="placement 'parallel'"):
    get_method('vera', sites=(('.*/query', 'output'),))
  with pytest.raises(ValueError, match="how='linear'"):
    method.check_average('exact')


@pytest.mark.parametrize('family', ['bert', 'llama'])
def test_splices_at_lora_sites_as_the_base_model(family):
  splice_checks.check_splices_at_lora_sites_as_identity(
      METHOD, family, {'lambda_d', 'lambda_b'})


@pytest.mark.parametrize('family', ['bert', 'llama'])
def test_merge_equals_unmerged(family):
  splice_checks.check_merge_equals_unmerged(METHOD, family)


def test_checkpoint_round_trip(tmp_path):
  splice_checks.check_checkpoint_round_trip(METHOD, 'bert', tmp_path)


def test_one_step_moves_only_its_leaves():
  splice_checks.check_one_step_moves_only_its_leaves(METHOD, 'llama')


def test_the_config_record_keeps_the_seed():
  assert method_from_dict(json.loads(METHOD.to_json())) == METHOD


STORED = get_method('vera', rank=8, projection_seed=5, stored_projections=True)
STORED_PATHS = {'adapters/a/shared/projection_a', 'adapters/a/shared/projection_b'}


def test_stored_projections_are_sliced_per_site_as_float64():
  module = VeRA(out_features=4, rank=3, stored_projections=True)
  rng = np.random.default_rng(0)
  shared = {'projection_a': rng.normal(size=(7, 3)).astype(np.float32),   # [N, r], N >= in
            'projection_b': rng.normal(size=(3, 6)).astype(np.float32)}   # [r, M], M >= out
  trained = {'lambda_d': rng.normal(size=3).astype(np.float32),
             'lambda_b': rng.normal(size=4).astype(np.float32)}
  x = rng.normal(size=(2, 5)).astype(np.float32)
  a, b = (shared[k].astype(np.float64) for k in ('projection_a', 'projection_b'))
  want = ((x.astype(np.float64) @ a[:5]) * trained['lambda_d']) @ b[:, :4] * trained['lambda_b']
  got = module.apply({'params': trained}, x, shared=shared)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='stored_projections=True.*called without them'):
    module.apply({'params': trained}, x)


def test_stored_projections_are_one_frozen_pair_for_the_widest_site():
  _, spliced, _, params, _ = splice_checks.spliced_host(STORED, 'llama')
  leaves = adapter_leaves(params, 'a')
  sites = spliced.adapter('a').sites  # query and the narrower value (fewer key/value heads)
  assert len({s.out_features for s in sites}) == 2
  widest_in, widest_out = max(s.in_features for s in sites), max(s.out_features for s in sites)
  a, b = vera_projections(5, widest_in, widest_out, 8)  # PEFT's fan-in N for A
  np.testing.assert_array_equal(np.asarray(leaves['adapters/a/shared/projection_a']), np.asarray(a))
  np.testing.assert_array_equal(np.asarray(leaves['adapters/a/shared/projection_b']), np.asarray(b))
  mask = traverse_util.flatten_dict(
      trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('a')])), sep='/')
  assert {p for p in leaves if not mask[p]} == STORED_PATHS
  with pytest.raises(ValueError, match='Average'):
    STORED.check_average('linear')
  with pytest.raises(ValueError, match='add_adapter on a Linen model'):
    STORED.make_shared_module(())


@pytest.mark.parametrize('family', ['bert', 'llama'])
def test_stored_projections_merge_equals_unmerged(family):
  splice_checks.check_merge_equals_unmerged(STORED, family)


def test_stored_projections_checkpoint_round_trip(tmp_path):
  splice_checks.check_checkpoint_round_trip(STORED, 'llama', tmp_path)  # projections perturbed too


def test_stored_projections_get_no_update():
  _, spliced, _, params, inputs = splice_checks.spliced_host(STORED, 'llama')
  params = splice_checks.perturb(params, 'a')
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('a')], train_head=False))
  trained, frozen = trainable.split(params, mask)
  grads = jax.grad(lambda t: jax.numpy.mean(
      spliced.apply(trainable.combine(t, frozen), *inputs, active='a') ** 2))(trained)
  moved = {p for p, g in traverse_util.flatten_dict(grads, sep='/').items() if np.abs(g).max() > 0}
  assert moved == set(adapter_leaves(params, 'a')) - STORED_PATHS

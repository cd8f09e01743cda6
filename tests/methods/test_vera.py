"""VeRA: the site formula against float64 NumPy and against PEFT's own VeRA layer, the shared frozen
projections, and the splice checks every LoRA-family method passes."""

import json

import jax
import numpy as np
import peft
import pytest
import torch

from adapters_jax import get_method
from adapters_jax.methods import VeRA, method_from_dict
from adapters_jax.methods.vera import vera_projections
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

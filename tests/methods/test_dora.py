"""DoRA: the site formula against float64 NumPy and against PEFT's LoRA layer with `use_dora`, the
magnitude's init, and the splice checks (scanned layers too: the frozen kernel is read per layer)."""

import jax
import numpy as np
import peft
import pytest
import torch
from flax import traverse_util

from adapters_jax import adapter_leaves, get_method, merge_adapter, unmerge_adapter
from adapters_jax.methods import DoRA
from tests.methods import splice_checks

METHOD = get_method('dora', rank=4, alpha=6.0)


def _site(in_features=5, out_features=6, rank=3):
  module = DoRA(out_features=out_features, rank=rank, alpha=6.0)
  x = jax.random.normal(jax.random.key(0), (2, 3, in_features))
  kernel = jax.random.normal(jax.random.key(4), (in_features, out_features))  # [in, out]
  params = module.init(jax.random.key(1), x, site_params={'kernel': kernel})['params']
  trained = {**params, 'lora_b': jax.random.normal(jax.random.key(2), (rank, out_features)),
             'magnitude': params['magnitude'] + jax.random.uniform(jax.random.key(3), (out_features,))}
  return module, x, kernel, params, trained


def test_init_magnitude_is_the_column_norm_and_the_term_is_zero():
  module, x, kernel, params, _ = _site()
  np.testing.assert_allclose(np.asarray(params['magnitude']),
                             np.linalg.norm(np.asarray(kernel, np.float64), axis=0), rtol=1e-6)
  out = module.apply({'params': params}, x, site_params={'kernel': kernel})
  np.testing.assert_allclose(np.asarray(out), 0.0, atol=1e-5)


def test_forward_matches_float64_formula():
  module, x, kernel, _, trained = _site()
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), trained)
  w = np.asarray(kernel, np.float64)
  updated = w + (6.0 / 3) * p['lora_a'] @ p['lora_b']
  merged = updated * (p['magnitude'] / np.linalg.norm(updated, axis=0))
  want = np.asarray(x, np.float64) @ (merged - w)
  got = module.apply({'params': trained}, x, site_params={'kernel': kernel})
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_forward_matches_peft_dora_layer():
  module, x, kernel, _, trained = _site()
  host = torch.nn.Sequential()
  host.add_module('query', torch.nn.Linear(5, 6))
  model = peft.get_peft_model(host, peft.LoraConfig(r=3, lora_alpha=6, use_dora=True,
                                                    target_modules=['query']))
  layer = model.base_model.model.query

  def tensor(v):
    return torch.tensor(np.asarray(v, np.float32))

  with torch.no_grad():
    layer.base_layer.weight.copy_(tensor(kernel).T)  # [out, in]
    layer.lora_A['default'].weight.copy_(tensor(trained['lora_a']).T)  # [r, in]
    layer.lora_B['default'].weight.copy_(tensor(trained['lora_b']).T)  # [out, r]
    layer.lora_magnitude_vector['default'].weight.copy_(tensor(trained['magnitude']))
    theirs = layer(tensor(x)).numpy()
    base = layer.base_layer(tensor(x)).numpy()
  ours = base + np.asarray(module.apply({'params': trained}, x, site_params={'kernel': kernel}))
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  assert np.abs(theirs - base).max() > 1e-2


@pytest.mark.parametrize('family', ['bert', 'bert-scan', 'llama'])
def test_splices_at_lora_sites_as_the_base_model(family):
  splice_checks.check_splices_at_lora_sites_as_identity(METHOD, family,
                                                        {'lora_a', 'lora_b', 'magnitude'})


def test_magnitude_starts_at_each_layers_own_column_norms_under_scan():
  _, _, base, params, _ = splice_checks.spliced_host(METHOD, 'bert-scan')
  kernel = np.asarray(traverse_util.flatten_dict(base, sep='/')['encoder/layers/attention/query/kernel'])
  magnitude = next(v for p, v in adapter_leaves(params, 'a').items()
                   if p.endswith('query/adapters/a/magnitude'))
  assert kernel.ndim == 3  # [layers, in, out]
  np.testing.assert_allclose(np.asarray(magnitude), np.linalg.norm(kernel, axis=1), rtol=1e-5)


@pytest.mark.parametrize('family', ['bert', 'llama'])
def test_merge_equals_unmerged_and_unmerge_is_refused(family):
  splice_checks.check_merge_equals_unmerged(METHOD, family, unmerge=False)
  _, spliced, _, params, _ = splice_checks.spliced_host(METHOD, family)
  merged_spliced, merged = merge_adapter(spliced, params, 'a')
  with pytest.raises(NotImplementedError, match='params from before merge_adapter'):
    unmerge_adapter(merged_spliced, merged, 'a')


def test_checkpoint_round_trip(tmp_path):
  splice_checks.check_checkpoint_round_trip(METHOD, 'bert', tmp_path)


def test_one_step_moves_only_its_leaves():
  splice_checks.check_one_step_moves_only_its_leaves(METHOD, 'bert')

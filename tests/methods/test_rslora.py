"""rsLoRA (`use_rslora=True`): the update scaled by alpha / sqrt(r), against float64 NumPy and PEFT's
LoRA layer, through merge, exact averaging, a checkpoint, and the splice checks."""

import jax
import numpy as np
import peft
import pytest
import torch

from adapters_jax import Average, add_adapter, average_adapter, get_method
from adapters_jax.methods import LoRA
from tests.methods import splice_checks

METHOD = get_method('lora', rank=4, alpha=3.0, use_rslora=True)


def _trained(in_features=5, out_features=6, rank=4):
  module = LoRA(out_features=out_features, rank=rank, alpha=3.0, use_rslora=True)
  x = jax.random.normal(jax.random.key(0), (2, 3, in_features))
  params = module.init(jax.random.key(1), x)['params']
  np.testing.assert_array_equal(np.asarray(params['lora_b']), 0.0)  # starts at the identity
  params = {**params, 'lora_b': jax.random.normal(jax.random.key(2), (rank, out_features))}
  return module, x, params


def test_forward_matches_float64_formula():
  module, x, params = _trained()
  a, b = (np.asarray(params[k], np.float64) for k in ('lora_a', 'lora_b'))
  want = np.asarray(x, np.float64) @ a @ b * (3.0 / np.sqrt(4))
  np.testing.assert_allclose(np.asarray(module.apply({'params': params}, x)), want, rtol=1e-5,
                             atol=1e-6)
  assert METHOD.scaling == pytest.approx(1.5) and get_method('lora', rank=4, alpha=3.0).scaling == 0.75


def test_forward_matches_peft_rslora_layer():
  module, x, params = _trained()
  torch.manual_seed(0)
  host = torch.nn.Sequential()
  host.add_module('query', torch.nn.Linear(5, 6))
  model = peft.get_peft_model(host, peft.LoraConfig(r=4, lora_alpha=3, use_rslora=True,
                                                    target_modules=['query']))
  layer = model.base_model.model.query

  def tensor(v):
    return torch.tensor(np.asarray(v, np.float32))

  with torch.no_grad():
    layer.lora_A['default'].weight.copy_(tensor(params['lora_a']).T)  # [r, in]
    layer.lora_B['default'].weight.copy_(tensor(params['lora_b']).T)  # [out, r]
    theirs = layer(tensor(x)).numpy()
    base = layer.base_layer(tensor(x)).numpy()
  assert layer.scaling['default'] == pytest.approx(1.5)
  ours = base + np.asarray(module.apply({'params': params}, x))
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_splices_at_lora_sites_as_the_base_model():
  # On decoders rsLoRA runs LoRA's code (tests/models/test_llama_adapters.py).
  splice_checks.check_splices_at_lora_sites_as_identity(METHOD, 'bert', {'lora_a', 'lora_b'})


def test_merge_equals_unmerged():
  splice_checks.check_merge_equals_unmerged(METHOD, 'bert')


def test_checkpoint_round_trip(tmp_path):
  splice_checks.check_checkpoint_round_trip(METHOD, 'bert', tmp_path)


def test_exact_average_of_rslora_and_lora_is_the_average_of_outputs():
  _, spliced, _, params, inputs = splice_checks.spliced_host(METHOD, 'bert')
  params = splice_checks.perturb(params, 'a', scale=1.0)
  spliced, params = add_adapter(spliced, params, 'b', get_method('lora', rank=2, alpha=5.0),
                                jax.random.key(2), *inputs)
  params = splice_checks.perturb(params, 'b', scale=1.0, seed=8)
  averaged, params = average_adapter(spliced, params, 'avg', ['a', 'b'], weights=[0.25, 0.75])
  assert averaged.adapter('avg').method.use_rslora is False
  run = splice_checks.run
  # The averaged adapter against the average of the two adapters' site outputs, taken at apply time.
  want = run(averaged, params, inputs, Average('a', 'b', weights=(0.25, 0.75)))
  np.testing.assert_allclose(run(averaged, params, inputs, 'avg'), want, rtol=1e-4, atol=1e-6)

"""The names both formats share, checked against transformers itself."""

import numpy as np
import pytest
import torch
import transformers
from transformers.activations import get_activation as hf_activation

from adapters_jax.interop import adapterhub
from adapters_jax.interop.naming import base_leaf_to_hf, hf_to_site, site_to_hf
from adapters_jax.nn.activations import get_activation


@pytest.mark.parametrize('ours', sorted(adapterhub.ACTIVATION_TO_HF))
def test_exported_activation_is_the_same_function_in_transformers(ours):
  # Exact and tanh GELU differ by < 1e-3, below what a logit comparison of a tiny model resolves.
  x = np.linspace(-6, 6, 2001)
  theirs = hf_activation(adapterhub.ACTIVATION_TO_HF[ours])(torch.tensor(x)).numpy()
  np.testing.assert_allclose(np.asarray(get_activation(ours)(x)), theirs, atol=1e-6)


@pytest.mark.parametrize('theirs', sorted(adapterhub.ACTIVATION_FROM_HF))
def test_imported_activation_is_the_same_function_here(theirs):
  x = np.linspace(-6, 6, 2001)
  expected = hf_activation(theirs)(torch.tensor(x)).numpy()
  ours = get_activation(adapterhub.ACTIVATION_FROM_HF[theirs])(x)
  np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-6)


def test_site_names_are_modules_of_transformers_bert():
  model = transformers.BertModel(transformers.BertConfig(
      vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12))
  linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
  for site in ('encoder/layer_1/attention/query', 'encoder/layer_0/attention/output',
               'encoder/layer_1/ffn/intermediate', 'encoder/layer_0/ffn/output'):
    assert site_to_hf(site) in linears
    assert hf_to_site('bert.' + site_to_hf(site)) == site
  parameters = dict(model.named_parameters())
  for leaf in ('encoder/layer_1/attention_layer_norm/scale', 'encoder/layer_0/ffn_layer_norm/bias'):
    assert base_leaf_to_hf(leaf, 'bert').removeprefix('bert.') in parameters

"""An NNX BERT twin's adapters exported to PEFT and AdapterHub load in `peft` 0.21.2 / `adapters`
1.3.0 on transformers' PyTorch BERT with the same base weights and give the twin's logits."""

import adapters
import jax
import numpy as np
import peft
import pytest
from flax import nnx

from adapters_jax.methods import get_method
from adapters_jax.nnx import splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.nnx.export import export_adapter
from tests.interop.conftest import (
  NUM_LABELS,
  inputs,
  load_ours,
  torch_base,
  torch_logits,
)
from tests.nnx import bert_twin, hosts

CASES = [
    ('peft', 'lora', dict(rank=4, alpha=8.0, sites=((r'blocks/\d+/attn/(query|value)', 'parallel'),))),
    ('peft', 'ia3', dict(sites=((r'blocks/\d+/attn/(key|value)', 'output'),
                                (r'blocks/\d+/mlp/down', 'input')))),
    ('adapters', 'houlsby', dict(size=8, sites=((r'blocks/\d+/attn/out', 'output'),
                                                (r'blocks/\d+/mlp/down', 'output')))),
    ('adapters', 'lora', dict(rank=4, alpha=12.0, sites=((r'blocks/\d+/attn/(query|value)',
                                                          'parallel'),))),
]


def _twin(base_dir):
  ours = load_ours(base_dir('bert'))
  return bert_twin.from_linen(ours.params, ours.model.config, NUM_LABELS)


def _load(fmt, base_dir, exported):
  model = torch_base(base_dir('bert'))
  if fmt == 'peft':
    return torch_logits(peft.PeftModel.from_pretrained(model, str(exported)).eval(), 'bert')
  adapters.init(model)
  model.load_adapter(str(exported), set_active=True, use_safetensors=True)
  return torch_logits(model, 'bert')


def test_the_twin_computes_transformers_bert(base_dir):
  twin = _twin(base_dir)
  np.testing.assert_allclose(twin(*inputs('bert')), torch_logits(torch_base(base_dir('bert')), 'bert'),
                             atol=1e-4, rtol=0)


@pytest.mark.parametrize('fmt,method,options', CASES, ids=[f'{c[0]}-{c[1]}' for c in CASES])
def test_export_loads_in_the_reference_library_with_the_twins_logits(tmp_path, base_dir, fmt,
                                                                     method, options):
  twin = _twin(base_dir)
  ids, mask = inputs('bert')
  splice.add_adapter(twin, 'task', get_method(method, train_also=(), **options), jax.random.key(0),
                     ids, mask)
  hosts.randomize(twin, AdapterParam, seed=2, scale=1.0)
  if method == 'ia3':  # scaling vectors around 1, as trained ones are
    nnx.update(twin, jax.tree.map(lambda v: v + 1.0, nnx.state(twin, AdapterParam)))
  splice.set_active(twin, 'task')
  exported = export_adapter(twin, 'task', bert_twin.NNX_TO_LINEN, fmt, tmp_path / fmt,
                            model_type='bert', base={'name': str(base_dir('bert'))})
  theirs = _load(fmt, base_dir, exported)
  base = torch_logits(torch_base(base_dir('bert')), 'bert')
  ours = np.asarray(twin(ids, mask))
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  # Not two base models: the base head is small (logits ~1e-2), so the change is read relative.
  assert np.abs(ours - base).max() > 0.01 * np.abs(base).max()


def test_export_refuses_shared_leaves_and_unmapped_sites(tmp_path, base_dir):
  twin = _twin(base_dir)
  ids, mask = inputs('bert')
  splice.add_adapter(twin, 'c', get_method('compacter', size=8, train_also=(), sites=(
      (r'blocks/\d+/mlp/down', 'output'),)), jax.random.key(0), ids, mask)
  with pytest.raises(ValueError, match='share'):
    export_adapter(twin, 'c', bert_twin.NNX_TO_LINEN, 'adapters', tmp_path / 'c', model_type='bert')
  splice.add_adapter(twin, 'l', get_method('lora', sites=((r'blocks/0/attn/query', 'parallel'),)),
                     jax.random.key(0), ids, mask)
  with pytest.raises(Exception, match='no counterpart'):
    export_adapter(twin, 'l', {'embed': 'embeddings'}, 'peft', tmp_path / 'l', model_type='bert')

"""Our adapters exported to AdapterHub's format give our logits in `adapters` 1.3.0 on PyTorch."""

import adapters
import jax
import numpy as np
import pytest

from adapters_jax import get_method, save_adapter
from adapters_jax.interop import InteropError, export_checkpoint
from adapters_jax.splicing.sites import FFN_INTERMEDIATE, KEY, QUERY, VALUE
from tests.interop.conftest import (
  assert_close,
  load_ours,
  our_logits,
  save_trained,
  torch_base,
  torch_logits,
  trained_adapter,
)

CASES = [
    # (method, options, family): each maps to AdapterHub exactly.
    ('houlsby', dict(size=8), 'bert'),            # both positions, GELU, layer norms + head trained
    ('pfeiffer', {}, 'roberta'),                  # FFN output only, ReLU, reduction factor 16
    ('parallel', dict(size=6), 'bert'),           # parallel to the FFN block, scaled by 4
    ('compacter', dict(size=8), 'bert'),          # PHM down/up, shared rule
    ('compacter++', dict(size=8), 'roberta'),
    ('lora', dict(sites=((QUERY, 'parallel'), (VALUE, 'parallel'), (FFN_INTERMEDIATE, 'parallel')),
                  rank=4, alpha=12.0), 'bert'),
    ('lora', dict(rank=4, alpha=3.0, use_rslora=True), 'bert'),  # written as alpha = 3 * sqrt(4)
    ('ia3', dict(sites=((KEY, 'output'), (VALUE, 'output'), (FFN_INTERMEDIATE, 'output'))), 'roberta'),
]


def load_in_adapters(base_dir, family, exported):
  model = torch_base(base_dir(family))
  base = torch_logits(model, family)
  adapters.init(model)
  model.load_adapter(str(exported), set_active=True, use_safetensors=True)
  return torch_logits(model, family), base


@pytest.mark.parametrize('method,options,family', CASES,
                         ids=[c[0] + ('-rslora' if c[1].get('use_rslora') else '') for c in CASES])
def test_export_loads_in_adapters_with_our_logits(tmp_path, base_dir, method, options, family):
  spliced, params, checkpoint = save_trained(tmp_path, base_dir(family), family, 'task', method, **options)
  exported = export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')
  theirs, base = load_in_adapters(base_dir, family, exported)
  assert_close(our_logits(spliced, params, family, 'task'), theirs, base)


def test_export_refuses_ia3_on_a_projection_input(tmp_path, base_dir):
  # Our default (IA)3 scales the input of the second FFN projection; AdapterHub scales outputs only.
  _, _, checkpoint = save_trained(tmp_path, base_dir('bert'), 'bert', 'task', 'ia3')
  with pytest.raises(InteropError, match=r'ffn/output \(input\).*sites'):
    export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')


def test_export_refuses_layer_norm_inside_the_adapter(tmp_path, base_dir):
  _, _, checkpoint = save_trained(tmp_path, base_dir('bert'), 'bert', 'task', 'pfeiffer',
                                  layer_norm_before=True)
  with pytest.raises(InteropError, match='layer_norm_before'):
    export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')


def _export(tmp_path, base, name, method, seed):
  """Exports a random `method` adapter without the task head (AdapterHub's static head is one per
  model: each export's head would replace the last one's)."""
  spliced, params, mask = trained_adapter(base, 'bert', name, get_method(method, size=8), seed=seed)
  params = {**params, 'classifier': load_ours(base).params['classifier']}
  mask = {**mask, 'classifier': jax.tree.map(lambda _: False, mask['classifier'])}
  checkpoint = save_adapter(tmp_path / name / 'best', spliced, params, name, mask=mask,
                            base_name=str(base))
  notes = []
  exported = export_checkpoint(checkpoint, 'adapters', tmp_path / name / 'hub', notify=notes.append)
  return our_logits(spliced, params, 'bert', name), exported, notes


def test_double_seq_bn_exports_are_self_contained_and_houlsby_says_it_is_not(tmp_path, base_dir):
  # Bugs caught: a Houlsby export that changes the AdapterHub model for every adapter without a word;
  # a frozen-base variant that still carries layer norms.
  base = base_dir('bert')
  ours_a, hub_a, notes_a = _export(tmp_path, base, 'a', 'double_seq_bn', seed=1)
  ours_b, hub_b, notes_b = _export(tmp_path, base, 'b', 'double_seq_bn', seed=3)
  assert notes_a == notes_b == []
  model = torch_base(base)
  plain = torch_logits(model, 'bert')
  adapters.init(model)
  model.load_adapter(str(hub_a), use_safetensors=True)
  model.load_adapter(str(hub_b), use_safetensors=True)
  for name, ours in (('a', ours_a), ('b', ours_b)):
    model.set_active_adapters(name)
    np.testing.assert_allclose(torch_logits(model, 'bert'), ours, atol=1e-5, rtol=0)
    assert np.abs(ours - plain).max() > 1e-3  # the adapter is seen (the base head's logits are small)
  model.set_active_adapters(None)
  np.testing.assert_array_equal(torch_logits(model, 'bert'), plain)  # the base is untouched

  _, hub_houlsby, notes = _export(tmp_path, base, 'h', 'houlsby', seed=5)
  assert len(notes) == 1 and 'layer norms' in notes[0] and 'double_seq_bn' in notes[0]
  model.load_adapter(str(hub_houlsby), use_safetensors=True)
  model.set_active_adapters(None)
  assert np.abs(torch_logits(model, 'bert') - plain).max() > 1e-4  # what the note warns of

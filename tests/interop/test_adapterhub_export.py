"""Our adapters exported to AdapterHub's format give our logits in `adapters` 1.3.0 on PyTorch."""

import adapters
import pytest

from adapters_jax.interop import InteropError, export_checkpoint
from adapters_jax.splicing.sites import FFN_INTERMEDIATE, KEY, QUERY, VALUE
from tests.interop.conftest import assert_close, our_logits, save_trained, torch_base, torch_logits

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

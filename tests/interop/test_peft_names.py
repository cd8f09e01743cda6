"""Our sites <-> the module names PEFT uses in transformers' models, for every family, both ways."""

import pytest

from adapters_jax.interop import InteropError
from adapters_jax.interop.peft_names import Module, module_to_sites, site_to_module

CASES = [
    ('bert', 'encoder/layer_1/ffn/output', Module('bert.encoder.layer.1.output.dense')),
    ('roberta', 'encoder/layer_0/attention/key', Module('roberta.encoder.layer.0.attention.self.key')),
    ('llama', 'decoder/layer_3/ffn/gate', Module('model.layers.3.mlp.gate_proj')),
    ('gemma', 'decoder/layer_0/ffn/intermediate', Module('model.layers.0.mlp.up_proj')),
    ('qwen2', 'decoder/layer_1/attention/output', Module('model.layers.1.self_attn.o_proj')),
    ('gpt2', 'decoder/layer_2/attention/key', Module('transformer.h.2.attn.c_attn', part=1)),
    ('gpt2', 'decoder/layer_2/ffn/output', Module('transformer.h.2.mlp.c_proj')),
    ('t5', 'decoder/layer_1/cross_attention/value', Module('decoder.block.1.layer.1.EncDecAttention.v')),
    ('t5', 'decoder/layer_0/ffn/output', Module('decoder.block.0.layer.2.DenseReluDense.wo')),
    ('t5', 'encoder/layer_2/ffn/intermediate', Module('encoder.block.2.layer.1.DenseReluDense.wi')),
]


@pytest.mark.parametrize('model_type,site,module', CASES, ids=[c[1] + '-' + c[0] for c in CASES])
def test_each_site_maps_to_its_module_and_back(model_type, site, module):
  assert site_to_module(site, model_type) == module
  back = module_to_sites(module.name, model_type)
  assert back[module.part or 0] == site


def test_gated_t5_names_its_first_ffn_projection_wi_0():
  assert site_to_module('encoder/layer_0/ffn/intermediate', 't5', gated_t5=True).name.endswith('.wi_0')
  assert module_to_sites('encoder.block.0.layer.1.DenseReluDense.wi_0', 't5') == (
      'encoder/layer_0/ffn/intermediate',)


def test_gpt2_c_attn_is_query_key_value_in_order():
  assert module_to_sites('transformer.h.0.attn.c_attn', 'gpt2') == tuple(
      f'decoder/layer_0/attention/{p}' for p in ('query', 'key', 'value'))


@pytest.mark.parametrize('site,model_type', [('encoder/layer_0/cross_attention/query', 't5'),
                                             ('decoder/layer_0/ffn/gate', 'gpt2'),
                                             ('decoder/layers/attention/query', 'llama')])
def test_a_site_without_a_module_is_refused(site, model_type):
  with pytest.raises(InteropError, match='Site'):
    site_to_module(site, model_type)

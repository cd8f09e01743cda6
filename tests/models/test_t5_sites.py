"""Adapter presets on T5: the papers' sites in encoder and decoder (self-attention, cross-attention,
feed-forward), identity at zero init, `leave_out` per block in both stacks, and Compacter's one
shared rule module for the whole model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax.methods import PRESETS, get_method
from adapters_jax.models import T5Config, T5ForConditionalGeneration
from adapters_jax.splicing.splice import add_adapter

CONFIG = T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                  num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                  dropout_rate=0.0, feed_forward_proj='gated-gelu', tie_word_embeddings=False)
BLOCKS = {'encoder': ('attention',), 'decoder': ('attention', 'cross_attention')}
# Compacter's default reduction (32) leaves a bottleneck of 1 at d_model=32; n=4 needs 4 | m.
OVERRIDES = {'compacter': {'size': 8}, 'compacter++': {'size': 8}, 'phm_adapter': {'size': 8, 'n': 4}}


def _sites(per_attention=(), per_block=(), layers=(0, 1)):
  """Expected site paths, written out by hand from the papers' placements."""
  out = set()
  for stack, attentions in BLOCKS.items():
    for i in layers:
      out |= {f'{stack}/layer_{i}/{a}/{p}' for a in attentions for p in per_attention}
      out |= {f'{stack}/layer_{i}/{p}' for p in per_block}
  return out


EXPECTED = {
    'houlsby': _sites(('output',), ('ffn/output',)),
    'double_seq_bn': _sites(('output',), ('ffn/output',)),
    'compacter': _sites(('output',), ('ffn/output',)),
    'pfeiffer': _sites((), ('ffn/output',)),
    'compacter++': _sites((), ('ffn/output',)),
    'phm_adapter': _sites(('output',), ('ffn/output',)),
    'parallel': _sites((), ('ffn',)),
    'lora': _sites(('query', 'value')),
    'vera': _sites(('query', 'value')),
    'dora': _sites(('query', 'value')),
    'ia3': _sites(('key', 'value'), ('ffn/output',)),
    'prefix_tuning': _sites(('prefix',)),
    'prefix_tuning_flat': _sites(('prefix',)),
    'prompt_tuning': {'encoder/input_embeddings'},  # the encoder's input only
    'mam': _sites(('prefix',), ('ffn',)),
    'unipelt': _sites(('prefix', 'query', 'value'), ('ffn/output',)),
}


@pytest.fixture(scope='module')
def base():
  model = T5ForConditionalGeneration(CONFIG)
  ids = np.random.default_rng(0).integers(2, 99, (2, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  decoder_ids = np.random.default_rng(1).integers(2, 99, (2, 5)).astype(np.int32)
  params = jax.jit(model.init)(jax.random.key(0), ids, mask, decoder_ids)['params']
  return model, params, (ids, mask, decoder_ids)


def test_every_preset_is_tested():
  assert set(EXPECTED) == set(PRESETS)


@pytest.mark.parametrize('preset', sorted(EXPECTED))
def test_preset_sites_on_t5(base, preset):
  model, params, args = base
  method = get_method(preset, **OVERRIDES.get(preset, {}))
  spliced, _ = add_adapter(model, params, 'a', method, jax.random.key(1), *args)
  sites = spliced.adapter('a').sites
  assert {s.path for s in sites} == EXPECTED[preset]
  if preset == 'ia3':  # (IA)3 scales the input of the second feed-forward projection
    assert {s.placement for s in sites if s.path.endswith('ffn/output')} == {'input'}


# Each preset with the init that makes its spliced model exactly the base model.
ZERO_INIT = {'houlsby': {'init': 'zero'}, 'double_seq_bn': {'init': 'zero'}, 'compacter': {'size': 8},
             'compacter++': {'size': 8},
             'phm_adapter': {'size': 8, 'n': 4}, 'pfeiffer': {}, 'parallel': {}, 'lora': {}, 'ia3': {},
             'vera': {'rank': 8}, 'dora': {}, 'prompt_tuning': {'length': 0}}


@pytest.mark.parametrize('preset', sorted(ZERO_INIT))
def test_zero_init_splice_equals_base(base, preset):
  model, params, args = base
  spliced, grafted = add_adapter(model, params, 'a', get_method(preset, **ZERO_INIT[preset]),
                                 jax.random.key(1), *args)
  expected = model.apply({'params': params}, *args)
  np.testing.assert_allclose(spliced.apply(grafted, *args, active='a'), expected, atol=1e-6,
                             rtol=0)


def test_leave_out_block_0_of_encoder_and_decoder(base):
  model, params, args = base
  method = get_method('houlsby', leave_out=(0,))
  spliced, _ = add_adapter(model, params, 'a', method, jax.random.key(1), *args)
  assert {s.path for s in spliced.adapter('a').sites} == _sites(('output',), ('ffn/output',),
                                                                layers=(1,))


def test_compacter_shares_one_rule_across_encoder_and_decoder(base):
  model, params, args = base
  spliced, grafted = add_adapter(model, params, 'c', get_method('compacter', size=8),
                                 jax.random.key(1), *args)
  flat = traverse_util.flatten_dict(grafted, sep='/')
  assert [p for p in flat if p.endswith('/rule')] == ['adapters/c/shared/rule']
  # Give the up-projections weight, so the rule reaches the output.
  flat = {p: (jnp.ones_like(v) if p.endswith('up/t') else v) for p, v in flat.items()}
  grafted = traverse_util.unflatten_dict(flat, sep='/')
  ids, mask, decoder_ids = args
  encoder_hidden = model.apply({'params': params}, ids, mask, method='encode')

  def rule_gradient(method, *inputs):
    loss = lambda p: jnp.sum(spliced.apply(p, *inputs, active='c', method=method) ** 2)
    return jax.jit(jax.grad(loss))(grafted)['adapters']['c']['shared']['rule']

  from_encoder = rule_gradient('encode', ids, mask)
  from_decoder = rule_gradient('decode', decoder_ids, encoder_hidden, mask)  # decoder sites only
  assert float(jnp.abs(from_encoder).max()) > 0 and float(jnp.abs(from_decoder).max()) > 0

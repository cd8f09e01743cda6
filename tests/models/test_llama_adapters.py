"""Adapters on the decoders (Llama with GQA, GPT-2): presets splice at the same named sites as on
the encoder, zero-init splices equal the base model, generation runs with adapters active, and
scanned/rematerialised layers equal plain ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax import add_adapter, get_method
from adapters_jax.models import DecoderLM, GenerationConfig, generate
from adapters_jax.models.scan_layout import stack_layers
from adapters_jax.splicing import trainable
from adapters_jax.splicing.sites import FFN_GATE, SiteMatchError
from tests.models import decoder_checkpoints as dc
from tests.models.tiny_decoders import TINY_DECODERS

EXPECTED_SITES = {  # per layer
    'lora': ['attention/query', 'attention/value'],
    'ia3': ['attention/key', 'attention/value', 'ffn/output'],
    'houlsby': ['attention/output', 'ffn/output'],
    'pfeiffer': ['ffn/output'],
}


def _model(family, **overrides):
  config = TINY_DECODERS[family].replace(**overrides)
  model = DecoderLM(config)
  ids, mask = dc.left_padded([7, 4], 7, config.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), ids, mask)['params']
  return model, params, ids, mask


# Scanned layers on Llama only: GPT-2's scan is covered by test_scan_and_remat_equal_plain_layers.
@pytest.mark.parametrize('family,scan', [('llama', False), ('llama', True), ('gpt2', False)],
                         ids=['llama', 'llama-scan', 'gpt2'])
@pytest.mark.parametrize('preset', sorted(EXPECTED_SITES))
def test_preset_splices_at_decoder_sites_and_starts_as_the_base_model(preset, family, scan):
  model, params, ids, mask = _model(family, scan_layers=scan)
  method = get_method(preset, init='zero') if preset == 'houlsby' else get_method(preset)
  spliced, new_params = add_adapter(model, params, 'a', method, jax.random.key(1), ids, mask)
  sites = [s.path for s in spliced.adapter('a').sites]
  if scan:
    assert sites == [f'decoder/layers/{s}' for s in EXPECTED_SITES[preset]]
  else:
    assert sites == [f'decoder/layer_{i}/{s}' for i in range(2) for s in EXPECTED_SITES[preset]]
  base = np.asarray(jax.jit(model.apply)({'params': params}, ids, mask))
  out = np.asarray(jax.jit(lambda p: spliced.apply(p, ids, mask, active='a'))(new_params))
  np.testing.assert_allclose(out, base, rtol=1e-5, atol=1e-6)


def test_houlsby_trains_the_decoder_norms():
  model, params, ids, mask = _model('llama')
  spliced, params = add_adapter(model, params, 'a', get_method('houlsby', size=8),
                                jax.random.key(1), ids, mask)
  rules = trainable.adapter_rules([spliced.adapter('a')])
  trained = trainable.leaf_paths(trainable.split(params, trainable.make_mask(params, rules))[0])
  for path in ('decoder/layer_0/attention_layer_norm/scale',
               'decoder/layer_1/ffn_layer_norm/scale', 'decoder/final_layer_norm/scale'):
    assert path in trained
  assert not any(p.endswith('attention/query/kernel') for p in trained)


@pytest.mark.parametrize('family', sorted(TINY_DECODERS))
def test_generation_runs_the_active_adapter(family):
  model, params, ids, mask = _model(family)
  spliced, params = add_adapter(model, params, 'a', get_method('lora', rank=4),
                                jax.random.key(1), ids, mask)
  flat = traverse_util.flatten_dict(params, sep='/')
  rng = np.random.default_rng(0)
  # LoRA's B starts at zero; give it weights so the adapter changes the output.
  flat = {p: (jnp.asarray(rng.normal(size=v.shape) * 0.5, jnp.float32)
              if p.endswith('/adapters/a/lora_b') else v) for p, v in flat.items()}
  params = traverse_util.unflatten_dict(flat, sep='/')
  config = GenerationConfig(max_new_tokens=5)
  with_adapter = np.asarray(generate(spliced, params, ids, mask, config, active='a').tokens)
  base = np.asarray(generate(spliced, params, ids, mask, config).tokens)
  assert not np.array_equal(with_adapter, base)
  # Reference: no cache, the spliced model recomputed on the whole sequence every step (laid
  # out at its final length, future slots masked on the right: one compiled forward pass).
  steps, prompt = config.max_new_tokens, ids.shape[1]
  seq = np.concatenate([ids, np.zeros((2, steps), np.int32)], axis=1)
  seq_mask = np.concatenate([mask, np.zeros((2, steps), np.int32)], axis=1)
  forward = jax.jit(lambda s, m: spliced.apply(params, s, m, active='a'))
  for step in range(steps):
    token = np.asarray(jnp.argmax(forward(seq, seq_mask)[:, prompt + step - 1], axis=-1))
    assert np.array_equal(token, with_adapter[:, step]), step
    seq[:, prompt + step], seq_mask[:, prompt + step] = token, 1


@pytest.mark.parametrize('family', sorted(TINY_DECODERS))
def test_scan_and_remat_equal_plain_layers(family):
  model, params, ids, mask = _model(family)
  scanned = DecoderLM(model.config.replace(scan_layers=True, remat=True))
  stacked = stack_layers(params, {'decoder': model.config.num_layers})
  plain_logits = jax.jit(model.apply)({'params': params}, ids, mask)
  np.testing.assert_allclose(jax.jit(scanned.apply)({'params': stacked}, ids, mask), plain_logits,
                             rtol=1e-5, atol=1e-5)
  config = GenerationConfig(max_new_tokens=4)
  np.testing.assert_array_equal(generate(scanned, stacked, ids, mask, config).tokens,
                                generate(model, params, ids, mask, config).tokens)
  # Gradients through the rematerialised scan equal the plain ones.
  loss = lambda m, p: jnp.sum(jnp.tanh(m.apply({'params': p}, ids, mask)))
  plain_grad = jax.jit(jax.grad(lambda p: loss(model, p)))(params)
  scan_grad = jax.jit(jax.grad(lambda p: loss(scanned, p)))(stacked)
  for got, want in zip(jax.tree.leaves(scan_grad),
                       jax.tree.leaves(stack_layers(plain_grad, {'decoder': 2})), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gate_site_is_named_on_gated_mlps_only():
  model, params, ids, mask = _model('llama')
  method = get_method('lora', sites=((FFN_GATE, 'parallel'),))
  spliced, _ = add_adapter(model, params, 'g', method, jax.random.key(1), ids, mask)
  assert [s.path for s in spliced.adapter('g').sites] == [
      'decoder/layer_0/ffn/gate', 'decoder/layer_1/ffn/gate']
  gpt2, gpt2_params, ids, mask = _model('gpt2')  # plain MLP: no gate to adapt
  with pytest.raises(SiteMatchError, match='decoder/layer_0/ffn/intermediate'):
    add_adapter(gpt2, gpt2_params, 'g', method, jax.random.key(1), ids, mask)


def test_training_attention_path_with_grouped_heads_equals_inference_path():
  """With a vanishing attention-dropout rate, the training path (explicit softmax, key/value
  heads repeated to the query heads) must give the inference path's logits."""
  model, params, ids, mask = _model('llama', attention_dropout=1e-9)
  inference = jax.jit(model.apply)({'params': params}, ids, mask)
  training = jax.jit(lambda p, key: model.apply({'params': p}, ids, mask, deterministic=False,
                                                rngs={'dropout': key}))(params, jax.random.key(5))
  np.testing.assert_allclose(training, inference, rtol=1e-5, atol=1e-5)

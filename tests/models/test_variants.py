"""Config validation, remat/scan equivalence and dropout behaviour on tiny models."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax.models import (
  BertEncoderModel,
  EncoderConfig,
  classification_model,
)
from adapters_jax.models.scan_layout import stack_layers, unstack_layers

CFG = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=48, max_position_embeddings=16)
IDS = jnp.array([[1, 5, 7, 9, 2, 0], [1, 4, 2, 0, 0, 0]], jnp.int32)
MASK = (IDS != 0).astype(jnp.int32)


def _init(config):
  return BertEncoderModel(config).init(jax.random.key(0), IDS)['params']


def test_from_hf_config_reads_keys_and_rejects_bad_values():
  cfg = EncoderConfig.from_hf_config({'model_type': 'bert', 'num_hidden_layers': 6,
                                      'hidden_size': 384, 'num_attention_heads': 12,
                                      'attention_probs_dropout_prob': 0.1})
  assert (cfg.num_layers, cfg.hidden_size, cfg.attention_dropout) == (6, 384, 0.1)
  with pytest.raises(ValueError, match="valid fields: .*'num_layers'"):
    EncoderConfig.from_hf_config({'model_type': 'bert'}, num_layayers=2)
  with pytest.raises(ValueError, match="valid values: .*'gelu_new'"):
    EncoderConfig.from_hf_config({'model_type': 'bert', 'hidden_act': 'gelu_accurate'})
  with pytest.raises(ValueError, match="valid values: .*'roberta'"):
    EncoderConfig.from_hf_config({'model_type': 'distilbert'})
  with pytest.raises(ValueError, match='position_embedding_type'):
    EncoderConfig.from_hf_config({'model_type': 'bert',
                                  'position_embedding_type': 'relative_key'})


def _loss(model, p):
  out = model.apply({'params': p}, IDS, MASK)
  return (out.last_hidden_state ** 2).mean() + out.pooled.sum(), out.last_hidden_state


@functools.cache
def _reference_grads():
  return jax.jit(jax.value_and_grad(lambda p: _loss(BertEncoderModel(CFG), p), has_aux=True))(
      _init(CFG))


@pytest.mark.parametrize('variant', [dict(remat=True), dict(scan_layers=True),
                                     dict(scan_layers=True, remat=True)])
def test_remat_and_scan_match_plain(variant):
  params = _init(CFG)
  config = CFG.replace(**variant)
  if config.scan_layers:
    params_v = stack_layers(params, {'encoder': CFG.num_layers})
    assert params_v['encoder']['layers']['ffn']['output']['kernel'].shape == (2, 48, 32)
    shapes = jax.eval_shape(lambda: _init(config))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params_v)
  else:
    params_v = params

  (_, h0), g0 = _reference_grads()
  (_, h1), g1 = jax.jit(jax.value_and_grad(
      lambda p: _loss(BertEncoderModel(config), p), has_aux=True))(params_v)
  np.testing.assert_allclose(h1, h0, atol=1e-5)
  if config.scan_layers:
    g1 = unstack_layers(g1)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_stack_unstack_roundtrip():
  params = _init(CFG)
  back = unstack_layers(stack_layers(params, {'encoder': CFG.num_layers}))
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, params, back))


@pytest.mark.parametrize('scan', [False, True])
def test_dropout_only_when_not_deterministic(scan):
  config = CFG.replace(scan_layers=scan)
  model = classification_model(config, num_labels=2)
  params = model.init(jax.random.key(0), IDS)['params']
  apply = jax.jit(model.apply, static_argnames='deterministic')
  run = lambda det, seed: apply({'params': params}, IDS, MASK, deterministic=det,
                                rngs={'dropout': jax.random.key(seed)})
  np.testing.assert_array_equal(run(True, 0), run(True, 1))
  no_dropout = classification_model(
      config.replace(hidden_dropout=0.0, attention_dropout=0.0), num_labels=2)
  np.testing.assert_allclose(run(True, 0), no_dropout.apply({'params': params}, IDS, MASK),
                             atol=1e-6)
  assert not np.allclose(run(False, 0), run(False, 1))


def test_attention_dropout_path_alone():
  """Only attention dropout on: the explicit einsum path is used and is random."""
  config = CFG.replace(hidden_dropout=0.0, attention_dropout=0.5)
  model = BertEncoderModel(config)
  params = _init(CFG)
  run = jax.vmap(lambda seed: model.apply(
      {'params': params}, IDS, MASK, deterministic=False,
      rngs={'dropout': jax.random.key(seed)}).last_hidden_state[:, :, :4])
  samples = jax.jit(run)(jnp.arange(256))
  assert not np.allclose(samples[0], samples[1])
  # Dropout's expectation equals the deterministic output: mean over many masks gets close.
  mean = samples.mean(0)
  det = model.apply({'params': params}, IDS, MASK).last_hidden_state[:, :, :4]
  assert float(jnp.abs(mean - det).mean()) < 0.1


def test_padding_does_not_change_real_tokens():
  params = _init(CFG)
  model = BertEncoderModel(CFG)
  apply = jax.jit(model.apply)
  padded = apply({'params': params}, IDS, MASK).last_hidden_state
  short = apply({'params': params}, IDS[1:, :3], MASK[1:, :3]).last_hidden_state
  np.testing.assert_allclose(padded[1, :3], short[0], atol=1e-5)


def test_config_is_frozen_and_hashable():
  with pytest.raises(dataclasses.FrozenInstanceError):
    CFG.num_layers = 2
  assert hash(CFG) == hash(CFG.replace())

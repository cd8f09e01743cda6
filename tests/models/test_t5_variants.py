"""T5 under `nn.scan` and `nn.remat`: same logits, gradients and greedy tokens as the plain model;
adapters splice into the scanned layout; dropout only while training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax.methods import get_method
from adapters_jax.models import (
    T5Config,
    T5ForConditionalGeneration,
    make_greedy_generate,
    plain_apply,
)
from adapters_jax.models.scan_layout import stack_layers, unstack_layers
from adapters_jax.splicing.splice import add_adapter

CONFIG = T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_decoder_layers=2,
                  num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                  dropout_rate=0.0, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                  eos_token_id=99)  # never produced: every row decodes max_new_tokens
DEPTHS = {'encoder': CONFIG.num_layers, 'decoder': CONFIG.num_decoder_layers}


@pytest.fixture(scope='module')
def plain():
  model = T5ForConditionalGeneration(CONFIG)
  ids = np.random.default_rng(0).integers(2, 99, (2, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  decoder_ids = np.random.default_rng(1).integers(2, 99, (2, 6)).astype(np.int32)
  params = jax.jit(model.init)(jax.random.key(0), ids, mask, decoder_ids)['params']
  return model, params, (ids, mask, decoder_ids)


def _logits_and_grads(model, params, args):
  """Logits and the gradient of mean(logits ** 2), in one compiled function."""
  def loss(p):
    logits = model.apply({'params': p}, *args)
    return jnp.mean(logits ** 2), logits

  grads, logits = jax.jit(jax.grad(loss, has_aux=True))(params)
  return logits, grads


@pytest.fixture(scope='module')
def plain_reference(plain):
  model, params, args = plain
  return _logits_and_grads(model, params, args)


def test_stack_unstack_round_trip(plain):
  _, params, _ = plain
  stacked = stack_layers(params, DEPTHS)
  assert stacked['encoder']['layers']['attention']['query']['kernel'].shape == (3, 32, 32)
  assert stacked['decoder']['layers']['cross_attention']['key']['kernel'].shape == (2, 32, 32)
  assert 'relative_attention_bias' in stacked['encoder']  # beside the scanned blocks
  same = jax.tree_util.tree_map(np.array_equal, unstack_layers(stacked), params)
  assert all(jax.tree_util.tree_leaves(same))


@pytest.mark.parametrize('scan,remat', [(True, False), (False, True), (True, True)])
def test_scan_and_remat_equal_plain(plain, plain_reference, scan, remat):
  model, params, args = plain
  variant = model.clone(config=CONFIG.replace(scan_layers=scan, remat=remat))
  variant_params = stack_layers(params, DEPTHS) if scan else params
  logits, grads = _logits_and_grads(variant, variant_params, args)
  expected_logits, expected_grads = plain_reference
  np.testing.assert_allclose(logits, expected_logits, atol=1e-5, rtol=0)
  if scan:
    grads = unstack_layers(grads)
  flat, flat_expected = (traverse_util.flatten_dict(g, sep='/') for g in (grads, expected_grads))
  assert flat.keys() == flat_expected.keys()
  for path, value in flat_expected.items():
    np.testing.assert_allclose(flat[path], value, atol=1e-6, rtol=1e-4, err_msg=path)


def test_scanned_greedy_decoding_equals_plain(plain):
  model, params, (ids, mask, _) = plain
  scanned_config = CONFIG.replace(scan_layers=True)
  scanned = model.clone(config=scanned_config)
  tokens = make_greedy_generate(plain_apply(scanned), scanned_config)(
      stack_layers(params, DEPTHS), ids, mask, max_new_tokens=5)
  expected = make_greedy_generate(plain_apply(model), CONFIG)(params, ids, mask, max_new_tokens=5)
  np.testing.assert_array_equal(tokens, expected)


def test_adapter_on_scanned_t5_matches_unscanned(plain, plain_reference):
  model, params, args = plain
  scanned = model.clone(config=CONFIG.replace(scan_layers=True))
  method = get_method('lora')
  spliced, grafted = add_adapter(model, params, 'a', method, jax.random.key(1), *args)
  # Give LoRA's B weight, so the adapter changes the output.
  flat = traverse_util.flatten_dict(grafted, sep='/')
  flat = {p: (jnp.full_like(v, 0.1) if p.endswith('lora_b') else v) for p, v in flat.items()}
  grafted = traverse_util.unflatten_dict(flat, sep='/')
  scanned_spliced, _ = add_adapter(scanned, stack_layers(params, DEPTHS), 'a', method,
                                   jax.random.key(1), *args)
  expected = jax.jit(lambda p: spliced.apply(p, *args, active='a'))(grafted)
  assert float(jnp.abs(expected - plain_reference[0]).max()) > 1e-2
  got = jax.jit(lambda p: scanned_spliced.apply(p, *args, active='a'))(
      stack_layers(grafted, DEPTHS))
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_dropout_only_while_training(plain, plain_reference):
  model, params, args = plain
  dropping = model.clone(config=CONFIG.replace(dropout_rate=0.3))
  eval_out = jax.jit(lambda p: dropping.apply({'params': p}, *args))(params)
  np.testing.assert_allclose(eval_out, plain_reference[0], atol=1e-6, rtol=0)
  train = jax.jit(lambda seed: dropping.apply({'params': params}, *args, deterministic=False,
                                              rngs={'dropout': jax.random.key(seed)}))
  assert float(jnp.abs(train(0) - eval_out).max()) > 1e-2
  np.testing.assert_array_equal(train(0), train(0))

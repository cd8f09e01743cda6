"""Cached generation on a Llama with grouped-query attention: against a recompute-everything
reference, against transformers' `generate`, EOS per row, sampling and its filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from adapters_jax.models import GenerationConfig, generate, load_pretrained
from adapters_jax.models import generation as generation_module
from tests.models import decoder_checkpoints as dc

NEW = 8


@pytest.fixture(scope='module')
def llama(tmp_path_factory):
  torch_model = dc.torch_model('llama')
  directory = dc.save(torch_model, tmp_path_factory.mktemp('llama'))
  pre = load_pretrained(str(directory), load_tokenizer=False)
  ids, mask = dc.left_padded([6, 3, 8], 8, pre.config.vocab_size, seed=1)
  return torch_model, pre, ids, mask


def _greedy_without_cache(pre, ids, mask, steps):
  """The reference: recompute the whole sequence for every new token, take the argmax.

  The sequence is laid out at its final length (not-yet-generated slots masked out on the
  right, which a causal model never reads), so one compiled forward pass serves every step.
  """
  batch, prompt = ids.shape
  ids = np.concatenate([ids, np.zeros((batch, steps), np.int32)], axis=1)
  mask = np.concatenate([mask, np.zeros((batch, steps), np.int32)], axis=1)
  forward = jax.jit(lambda i, m: pre.model.apply({'params': pre.params}, i, m))
  for t in range(steps):
    logits = forward(ids, mask)[:, prompt + t - 1]  # the last real token's prediction
    ids[:, prompt + t] = np.asarray(jnp.argmax(logits, axis=-1))
    mask[:, prompt + t] = 1
  return ids[:, prompt:]


def _torch_generate(torch_model, ids, mask, **kwargs):
  with torch.no_grad():
    out = torch_model.generate(input_ids=torch.from_numpy(ids).long(),
                               attention_mask=torch.from_numpy(mask).long(), do_sample=False,
                               max_new_tokens=NEW, pad_token_id=0, **kwargs)
  return out.numpy()[:, ids.shape[1]:]


def test_cached_greedy_equals_recompute_reference_and_torch(llama):
  torch_model, pre, ids, mask = llama
  out = generate(pre.model, pre.params, ids, mask, GenerationConfig(max_new_tokens=NEW))
  assert out.tokens.shape == (3, NEW) and out.tokens.dtype == jnp.int32
  np.testing.assert_array_equal(out.tokens, _greedy_without_cache(pre, ids, mask, NEW))
  np.testing.assert_array_equal(out.tokens, _torch_generate(torch_model, ids, mask,
                                                            eos_token_id=None))
  np.testing.assert_array_equal(out.lengths, [NEW] * 3)
  # Same shapes and config: no new compilation.
  compiled = generation_module._generate._cache_size()
  generate(pre.model, pre.params, ids[::-1], mask[::-1], GenerationConfig(max_new_tokens=NEW))
  assert generation_module._generate._cache_size() == compiled


def test_each_row_stops_at_its_own_eos_like_torch(llama):
  torch_model, pre, ids, mask = llama
  free = np.asarray(generate(pre.model, pre.params, ids, mask,
                             GenerationConfig(max_new_tokens=NEW)).tokens)
  eos = int(free[0, 2])  # row 0 emits it at step 2; other rows at their first occurrence
  config = GenerationConfig(max_new_tokens=NEW, eos_token_ids=(eos,), pad_token_id=0)
  out = generate(pre.model, pre.params, ids, mask, config)
  expected, lengths = np.zeros_like(free), []
  for row in range(3):
    hits = np.flatnonzero(free[row] == eos)
    length = int(hits[0]) + 1 if hits.size else NEW
    expected[row, :length] = free[row, :length]
    lengths.append(length)
  assert len(set(lengths)) > 1  # rows stop at different steps
  np.testing.assert_array_equal(out.tokens, expected)
  np.testing.assert_array_equal(out.lengths, lengths)
  reference = _torch_generate(torch_model, ids, mask, eos_token_id=eos)
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, :reference.shape[1]], reference)


def test_sampling_is_reproducible_and_top_k_1_is_greedy(llama):
  _, pre, ids, mask = llama
  config = GenerationConfig(max_new_tokens=NEW, do_sample=True, temperature=2.0)
  first = generate(pre.model, pre.params, ids, mask, config, jax.random.key(3)).tokens
  again = generate(pre.model, pre.params, ids, mask, config, jax.random.key(3)).tokens
  other = generate(pre.model, pre.params, ids, mask, config, jax.random.key(4)).tokens
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  greedy = generate(pre.model, pre.params, ids, mask, GenerationConfig(max_new_tokens=NEW))
  top1 = generate(pre.model, pre.params, ids, mask,
                  GenerationConfig(max_new_tokens=NEW, do_sample=True, temperature=2.0,
                                   top_k=1), jax.random.key(3))
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)


@pytest.mark.parametrize('temperature,top_k,top_p', [(0.7, 20, 0.8), (1.3, 0, 0.5),
                                                     (1.0, 5, 1.0)])
def test_sampling_filters_match_transformers_warpers(temperature, top_k, top_p):
  logits = np.random.default_rng(0).normal(size=(4, 97)).astype(np.float32) * 3
  config = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
  ours = np.asarray(generation_module.filter_logits(jnp.asarray(logits), config))
  reference = torch.from_numpy(logits)
  warpers = [transformers.TemperatureLogitsWarper(temperature)]
  if top_k:
    warpers.append(transformers.TopKLogitsWarper(top_k))
  if top_p < 1.0:
    warpers.append(transformers.TopPLogitsWarper(top_p))
  for warper in warpers:
    reference = warper(None, reference)
  reference = reference.numpy()
  np.testing.assert_array_equal(np.isinf(ours), np.isinf(reference))
  assert 0 < np.isfinite(ours).sum() < ours.size
  np.testing.assert_allclose(ours[np.isfinite(ours)], reference[np.isfinite(reference)],
                             rtol=1e-6)


def test_right_padded_prompt_is_refused_with_the_fix_named(llama):
  _, pre, ids, mask = llama
  with pytest.raises(ValueError, match=r"rows \[0, 1\].*padding_side='left'"):
    generate(pre.model, pre.params, ids, mask[:, ::-1], GenerationConfig(max_new_tokens=2))


@pytest.mark.parametrize('family,overrides', [
    ('mistral', {}),  # sliding window 4: cached slots outside the window must be masked
    ('llama', dict(rope_scaling=dict(rope_type='dynamic', factor=8.0),
                   max_position_embeddings=8)),  # the NTK base grows step by step, as in HF
], ids=['mistral-window', 'llama-dynamic'])
def test_cached_greedy_equals_torch_with_window_or_dynamic_rope(family, overrides, tmp_path):
  torch_model = dc.torch_model(family, **overrides)
  pre = load_pretrained(str(dc.save(torch_model, tmp_path)), load_tokenizer=False)
  ids, mask = dc.left_padded([6, 3, 8], 8, pre.config.vocab_size, seed=1)
  out = generate(pre.model, pre.params, ids, mask, GenerationConfig(max_new_tokens=NEW))
  np.testing.assert_array_equal(out.tokens, _torch_generate(torch_model, ids, mask,
                                                            eos_token_id=None))


def test_generation_config_for_model_takes_eos_and_pad_from_the_model():
  from adapters_jax.models import DecoderConfig

  no_pad = GenerationConfig.for_model(DecoderConfig(eos_token_id=(7, 9), pad_token_id=None),
                                      max_new_tokens=3)
  assert (no_pad.eos_token_ids, no_pad.pad_token_id, no_pad.max_new_tokens) == ((7, 9), 7, 3)
  with_pad = GenerationConfig.for_model(DecoderConfig(eos_token_id=2, pad_token_id=0))
  assert (with_pad.eos_token_ids, with_pad.pad_token_id) == ((2,), 0)

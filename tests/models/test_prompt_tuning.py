"""Prompt tuning on our BERT, T5 and decoders against transformers' PyTorch models in float64,
fed what PEFT feeds them: `inputs_embeds = [prompt; token embeddings]`, the attention mask with
ones in front (token types 0, positions counting the prompt)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import traverse_util

from adapters_jax.methods import PromptTuningConfig
from adapters_jax.models import GenerationConfig, generate, load_pretrained, make_greedy_generate
from adapters_jax.models.beam_search import BeamSearchConfig, beam_search
from adapters_jax.splicing.splice import add_adapter
from adapters_jax.task_kinds.causal_lm import lm_loss
from tests.models import decoder_checkpoints as dc
from tests.models import t5_reference

P = 4


def _prompt(params, name='p'):
  """The one prompt leaf `[P, hidden]` of adapter `name`, as numpy."""
  flat = traverse_util.flatten_dict(params, sep='/')
  (leaf,) = [v for k, v in flat.items() if k.endswith(f'input_embeddings/adapters/{name}/prompt')]
  return np.asarray(leaf, np.float64)


def _with_prompt(pre, *sample, length=P, combine='prefix', seed=0):
  method = PromptTuningConfig(length=length, combine=combine, init_scale=0.5)
  return add_adapter(pre.model, pre.params, 'p', method, jax.random.key(seed), *sample)


def _grow(mask, n):
  return np.concatenate([np.ones((mask.shape[0], n), mask.dtype), mask], axis=1)


# --------------------------------------------------------------------------------------------------
# BERT

@pytest.fixture(scope='module')
def bert(tmp_path_factory):
  config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37,
                                   max_position_embeddings=40, type_vocab_size=2,
                                   attn_implementation='eager')
  torch.manual_seed(0)
  torch_model = transformers.BertModel(config).eval()
  with torch.no_grad():
    for name, param in torch_model.named_parameters():
      if 'LayerNorm.weight' in name:
        param.uniform_(0.5, 1.5)
  directory = tmp_path_factory.mktemp('bert')
  torch_model.save_pretrained(str(directory), safe_serialization=True)
  pre = load_pretrained(str(directory), load_tokenizer=False)
  rng = np.random.default_rng(0)
  ids = rng.integers(2, 99, (3, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  ids[1, 5:] = 0
  types = np.zeros_like(ids)
  types[:, 4:] = 1
  return torch_model.double(), pre, ids, mask, types


def _bert_reference(torch_model, prompt, ids, mask, types, combine):
  with torch.no_grad():
    words = torch_model.embeddings.word_embeddings(torch.from_numpy(ids).long())
    tiled = torch.from_numpy(prompt)[None].expand(ids.shape[0], -1, -1)
    if combine == 'prefix':
      embeds = torch.cat([tiled, words], 1)
    else:
      embeds = torch.cat([words[:, :1], tiled, words[:, 1:]], 1)
    out = torch_model(inputs_embeds=embeds, attention_mask=torch.from_numpy(_grow(mask, P)),
                      token_type_ids=torch.from_numpy(np.concatenate(
                          [np.zeros((ids.shape[0], P), types.dtype), types], 1)).long())
  return out.last_hidden_state.numpy()


@pytest.mark.parametrize('combine', ['prefix', 'prefix_after_bos'])
def test_bert_prompt_matches_torch_float64(bert, combine):
  torch_model, pre, ids, mask, types = bert
  spliced, params = _with_prompt(pre, ids, mask, types, combine=combine)
  prompt = _prompt(params)
  assert np.abs(prompt).max() > 0.1  # random, non-zero
  ours = spliced.apply(params, ids, mask, types, active='p')
  assert ours.last_hidden_state.shape == (3, 9 + P, 32)
  expected = _bert_reference(torch_model, prompt, ids, mask, types, combine)
  real = _grow(mask, P).astype(bool)
  np.testing.assert_allclose(np.asarray(ours.last_hidden_state)[real], expected[real],
                             atol=2e-5, rtol=2e-5)


def test_bert_zero_length_prompt_is_the_base_model(bert):
  _, pre, ids, mask, types = bert
  spliced, params = _with_prompt(pre, ids, mask, types, length=0)
  with_prompt = spliced.apply(params, ids, mask, types, active='p').last_hidden_state
  base = pre.model.apply({'params': pre.params}, ids, mask, types).last_hidden_state
  np.testing.assert_array_equal(with_prompt, base)


def test_bert_padded_row_equals_the_row_alone(bert):
  _, pre, ids, mask, types = bert
  spliced, params = _with_prompt(pre, ids, mask, types)
  batch = spliced.apply(params, ids, mask, types, active='p').last_hidden_state
  alone = spliced.apply(params, ids[1:2, :5], mask[1:2, :5], types[1:2, :5],
                        active='p').last_hidden_state
  np.testing.assert_allclose(batch[1, :5 + P], alone[0], atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Decoders

@pytest.fixture(scope='module', params=['llama', 'gpt2'])
def decoder(request, tmp_path_factory):
  torch_model = dc.torch_model(request.param)
  directory = dc.save(torch_model, tmp_path_factory.mktemp(request.param))
  pre = load_pretrained(str(directory), load_tokenizer=False)
  ids, mask = dc.left_padded([6, 3, 8], 8, pre.config.vocab_size, seed=1)
  spliced, params = _with_prompt(pre, ids, mask)
  return torch_model.double(), pre, spliced, params, ids, mask


def test_decoder_prompt_matches_torch_float64(decoder):
  torch_model, _, spliced, params, ids, mask = decoder
  prompt = _prompt(params)
  assert np.abs(prompt).max() > 0.1
  ours = np.asarray(spliced.apply(params, ids, mask, active='p'))  # [batch, seq, vocab]
  assert ours.shape[:2] == ids.shape
  grown = _grow(mask, P)
  with torch.no_grad():
    words = torch_model.get_input_embeddings()(torch.from_numpy(ids).long())
    embeds = torch.cat([torch.from_numpy(prompt)[None].expand(3, -1, -1), words], 1)
    expected = torch_model(inputs_embeds=embeds, attention_mask=torch.from_numpy(grown),
                           position_ids=torch.from_numpy(dc.hf_positions(grown)).long()
                           ).logits.numpy()[:, P:]  # the real tokens' logits
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], expected[real], atol=1e-4, rtol=1e-4)


def test_decoder_zero_length_prompt_is_the_base_model(decoder):
  _, pre, _, _, ids, mask = decoder
  spliced, params = _with_prompt(pre, ids, mask, length=0)
  np.testing.assert_array_equal(spliced.apply(params, ids, mask, active='p'),
                                pre.model.apply({'params': pre.params}, ids, mask))


def test_decoder_padded_row_equals_the_row_alone(decoder):
  _, _, spliced, params, ids, mask = decoder
  batch = spliced.apply(params, ids, mask, active='p')
  alone = spliced.apply(params, ids[1:2, -3:], mask[1:2, -3:], active='p')
  np.testing.assert_allclose(batch[1, -3:], alone[0], atol=1e-5)


def test_cached_greedy_with_prompt_equals_the_uncached_forward(decoder):
  _, _, spliced, params, ids, mask = decoder
  steps = 5
  out = generate(spliced, params, ids, mask, GenerationConfig(max_new_tokens=steps), active='p')
  # Reference: the whole sequence recomputed without a cache for every new token.
  seq = np.concatenate([ids, np.zeros((3, steps), np.int32)], axis=1)
  seq_mask = np.concatenate([mask, np.zeros((3, steps), np.int32)], axis=1)
  forward = jax.jit(lambda i, m: spliced.apply(params, i, m, active='p'))
  for t in range(steps):
    logits = forward(seq, seq_mask)[:, ids.shape[1] + t - 1]
    seq[:, ids.shape[1] + t] = np.asarray(jnp.argmax(logits, axis=-1))
    seq_mask[:, ids.shape[1] + t] = 1
  np.testing.assert_array_equal(out.tokens, seq[:, ids.shape[1]:])
  # The prompt changes what is generated (it is really in the first cache slots).
  base = generate(spliced, params, ids, mask, GenerationConfig(max_new_tokens=steps))
  assert not np.array_equal(base.tokens, out.tokens)


# --------------------------------------------------------------------------------------------------
# T5

@pytest.fixture(scope='module')
def t5(tmp_path_factory):
  torch_model = t5_reference.torch_t5('v1.1')
  directory = t5_reference.save(torch_model, tmp_path_factory.mktemp('t5'))
  pre = load_pretrained(str(directory), load_tokenizer=False)
  ids, mask = t5_reference.encoder_batch()
  decoder_ids = np.random.default_rng(1).integers(2, 99, (3, 5)).astype(np.int32)
  return torch_model.double(), pre, ids, mask, decoder_ids


def test_t5_prompt_matches_torch_float64(t5):
  torch_model, pre, ids, mask, decoder_ids = t5
  spliced, params = _with_prompt(pre, ids, mask, decoder_ids)
  prompt = _prompt(params)
  assert np.abs(prompt).max() > 0.1
  ours = spliced.apply(params, ids, mask, decoder_ids, active='p')
  with torch.no_grad():
    words = torch_model.shared(torch.from_numpy(ids).long())
    embeds = torch.cat([torch.from_numpy(prompt)[None].expand(3, -1, -1), words], 1)
    expected = torch_model(inputs_embeds=embeds, attention_mask=torch.from_numpy(_grow(mask, P)),
                           decoder_input_ids=torch.from_numpy(decoder_ids).long()).logits.numpy()
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)
  base = pre.model.apply({'params': pre.params}, ids, mask, decoder_ids)
  assert np.abs(np.asarray(base) - expected).max() > 1e-3  # the prompt matters


def test_t5_zero_length_prompt_is_the_base_model(t5):
  _, pre, ids, mask, decoder_ids = t5
  spliced, params = _with_prompt(pre, ids, mask, decoder_ids, length=0)
  np.testing.assert_array_equal(spliced.apply(params, ids, mask, decoder_ids, active='p'),
                                pre.model.apply({'params': pre.params}, ids, mask, decoder_ids))


def test_t5_padded_row_equals_the_row_alone(t5):
  _, pre, ids, mask, decoder_ids = t5
  spliced, params = _with_prompt(pre, ids, mask, decoder_ids)
  batch = spliced.apply(params, ids, mask, decoder_ids, active='p')
  alone = spliced.apply(params, ids[1:2, :7], mask[1:2, :7], decoder_ids[1:2], active='p')
  np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)


def test_packed_rows_each_see_the_prompt_as_alone(decoder):
  # Two examples packed in one row (segment ids, positions restarting) with a prompt: each one's
  # logits are those it gets alone with the prompt in front.
  _, _, spliced, params, ids, _ = decoder
  first, second = ids[2, :5], ids[2, 5:]
  row = np.concatenate([first, second])[None]
  segments = np.array([[1] * 5 + [2] * 3])
  positions = np.array([list(range(5)) + list(range(3))])
  packed = spliced.apply(params, row, np.ones_like(row), positions, segment_ids=segments,
                         active='p')
  for start, example in ((0, first), (5, second)):
    alone = spliced.apply(params, example[None], np.ones((1, len(example)), np.int32),
                          active='p')
    np.testing.assert_allclose(packed[0, start:start + len(example)], alone[0], atol=1e-5)


def test_t5_cached_greedy_with_prompt_equals_recomputing_every_token(t5):
  # The decoder's cached steps attend over the longer encoder output (the prompt's positions
  # unmasked) as teacher forcing does.
  _, pre, ids, mask, decoder_ids = t5
  spliced, params = _with_prompt(pre, ids, mask, decoder_ids)
  steps = 4
  active = functools.partial(spliced.apply, active='p')
  ours = np.asarray(make_greedy_generate(active, pre.config)(params, ids, mask,
                                                             max_new_tokens=steps))
  start = pre.config.decoder_start_token_id
  sequence = np.full((3, steps + 1), start, np.int32)
  for t in range(steps):
    logits = spliced.apply(params, ids, mask, sequence[:, :t + 1], active='p')
    sequence[:, t + 1] = np.asarray(jnp.argmax(logits[:, -1], axis=-1))
  eos = pre.config.eos_token_id
  for row, expected in zip(ours, sequence[:, 1:], strict=True):
    stop = next((k + 1 for k, token in enumerate(expected) if token == eos), steps)
    np.testing.assert_array_equal(row[:stop], expected[:stop])


def test_beam_search_with_one_beam_and_a_prompt_is_greedy(decoder):
  _, _, spliced, params, ids, mask = decoder
  greedy = generate(spliced, params, ids, mask, GenerationConfig(max_new_tokens=4), active='p')
  beams = beam_search(spliced, params, ids, mask, BeamSearchConfig(max_new_tokens=4, num_beams=1),
                      active='p')
  np.testing.assert_array_equal(beams.tokens, greedy.tokens)


def test_decoder_logits_and_loss_match_peft_prompt_tuning(decoder):
  # PEFT's PROMPT_TUNING on the same torch model with our prompt copied in: its logits after the
  # virtual tokens are ours, and its loss (labels -100 on the prompt) is our causal-LM loss.
  # Unpadded rows: PEFT ignores position ids, so left padding would shift its positions.
  torch_model, pre, spliced, params, ids, _ = decoder
  rows = ids[[2]]  # the unpadded row
  family = 'llama' if pre.config.position_embedding == 'rope' else 'gpt2'
  reference = dc.torch_model(family).double()
  wrapped = peft.get_peft_model(reference, peft.PromptTuningConfig(
      task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=P)).double()
  with torch.no_grad():
    wrapped.prompt_encoder['default'].embedding.weight.copy_(torch.from_numpy(_prompt(params)))
    labels = torch.from_numpy(rows).long()
    labels[:, 0] = -100  # no prediction of the first token (our outputs start at it)
    out = wrapped(input_ids=torch.from_numpy(rows).long(),
                  attention_mask=torch.ones(rows.shape, dtype=torch.long), labels=labels)
  ours = spliced.apply(params, rows, np.ones_like(rows), active='p')
  np.testing.assert_allclose(ours, out.logits.numpy()[:, P:], atol=1e-4, rtol=1e-4)
  targets = np.concatenate([rows[:, 1:], np.zeros((1, 1), np.int32)], axis=1)
  weights = np.concatenate([np.ones((1, rows.shape[1] - 1)), np.zeros((1, 1))], axis=1)
  np.testing.assert_allclose(float(lm_loss(ours, targets, weights)), float(out.loss), rtol=1e-5)


def test_a_prompt_past_the_learned_positions_is_refused(decoder):
  # GPT-2's learned table would be read past its end (NaN); RoPE has no table and runs.
  _, pre, spliced, params, _, _ = decoder
  ids = np.ones((1, pre.config.max_position_embeddings - P + 1), np.int32)
  if pre.config.position_embedding == 'learned':
    with pytest.raises(ValueError, match='prompt vectors make .* learned positions'):
      spliced.apply(params, ids, np.ones_like(ids), active='p')
  else:
    assert np.isfinite(spliced.apply(params, ids, np.ones_like(ids), active='p')).all()

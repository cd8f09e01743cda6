"""GPT-2 vs transformers' PyTorch `GPT2LMHeadModel` (the reference), same weights: logits on a
left-padded batch (learned positions must count real tokens), cached greedy generation, bf16."""

import numpy as np
import pytest
import torch
import transformers

from adapters_jax.models import GenerationConfig, generate, load_pretrained
from tests.models import decoder_checkpoints as dc


@pytest.fixture(scope='module')
def gpt2(tmp_path_factory):
  torch_model = dc.torch_model('gpt2', seed=2)
  directory = dc.save(torch_model, tmp_path_factory.mktemp('gpt2'))
  return torch_model, load_pretrained(str(directory), load_tokenizer=False)


def test_loads_as_gpt2_with_split_attention_projections(gpt2):
  torch_model, pre = gpt2
  assert pre.config.model_type == 'gpt2' and pre.config.tie_word_embeddings
  attention = pre.params['decoder']['layer_1']['attention']
  assert sorted(attention) == ['key', 'output', 'query', 'value']
  fused = torch_model.transformer.h[1].attn.c_attn.weight.detach().numpy()  # [in, 3 * hidden]
  np.testing.assert_array_equal(attention['value']['kernel'], fused[:, 128:])
  assert 'lm_head' not in pre.params  # tied: the head reads the token embeddings


def test_logits_match_torch_on_left_padded_batch(gpt2):
  torch_model, pre = gpt2
  ids, mask = dc.left_padded([10, 4, 12], 12, pre.config.vocab_size)
  reference = dc.torch_logits(torch_model, ids, mask)
  ours = pre.model.apply({'params': pre.params}, ids, mask)
  assert dc.max_diff_at(ours, reference, mask) <= 1e-4


def test_cached_greedy_generation_equals_torch(gpt2):
  torch_model, pre = gpt2
  ids, mask = dc.left_padded([5, 2, 7], 7, pre.config.vocab_size, seed=3)
  out = generate(pre.model, pre.params, ids, mask, GenerationConfig(max_new_tokens=6))
  with torch.no_grad():
    reference = torch_model.generate(
        input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
        do_sample=False, max_new_tokens=6, pad_token_id=0, eos_token_id=None).numpy()[:, 7:]
  assert len(np.unique(reference)) > 3  # not a degenerate repetition
  np.testing.assert_array_equal(out.tokens, reference)


def test_bfloat16_compute_stays_close_to_float32(gpt2):
  _, pre = gpt2
  ids, mask = dc.left_padded([10, 4, 12], 12, pre.config.vocab_size)
  f32 = np.asarray(pre.model.apply({'params': pre.params}, ids, mask))
  bf16_model = pre.model.clone(config=pre.config.replace(dtype='bfloat16'))
  bf16 = bf16_model.apply({'params': pre.params}, ids, mask)
  assert bf16.dtype == np.float32
  real = mask[..., None] == 1
  err = np.linalg.norm(np.where(real, bf16 - f32, 0)) / np.linalg.norm(np.where(real, f32, 0))
  assert 1e-5 < err <= 2e-2, err  # bf16 really ran (not float32), and stayed close


def _word_tokenizer(directory, vocab_size):
  """A real HF fast tokenizer (word level, no pad token, like GPT-2's) saved beside the weights."""
  from tokenizers import Tokenizer, models, pre_tokenizers

  vocab = {'<eos>': 0, '<unk>': 1, **{f'w{i}': i for i in range(2, vocab_size)}}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token='<eos>',
                                              unk_token='<unk>')
  fast.save_pretrained(str(directory))


def test_loaded_tokenizer_pads_on_the_left_for_generation(gpt2, tmp_path):
  torch_model, _ = gpt2
  dc.save(torch_model, tmp_path)
  _word_tokenizer(tmp_path, torch_model.config.vocab_size)
  pre = load_pretrained(str(tmp_path))
  assert pre.tokenizer.padding_side == 'left' and pre.tokenizer.pad_token == '<eos>'
  batch = pre.tokenizer(['w5 w9 w12 w40', 'w7'], padding=True, return_tensors='np')
  np.testing.assert_array_equal(batch['attention_mask'], [[1, 1, 1, 1], [0, 0, 0, 1]])
  out = generate(pre.model, pre.params, batch['input_ids'], batch['attention_mask'],
                 GenerationConfig(max_new_tokens=3))
  # Row 1 alone (no padding) generates the same tokens: padding does not leak in.
  alone = generate(pre.model, pre.params, batch['input_ids'][1:, -1:],
                   batch['attention_mask'][1:, -1:], GenerationConfig(max_new_tokens=3))
  np.testing.assert_array_equal(out.tokens[1:], alone.tokens)
  assert pre.tokenizer.decode(out.tokens[0]).split()[0].startswith('w')


def test_decoder_checkpoints_refuse_encoder_head_options(gpt2, tmp_path):
  torch_model, _ = gpt2
  dc.save(torch_model, tmp_path)
  with pytest.raises(ValueError, match=r"valid heads: \['causal_lm'\]"):
    load_pretrained(str(tmp_path), head='classification', load_tokenizer=False)
  with pytest.raises(ValueError, match="num_labels is for classification heads"):
    load_pretrained(str(tmp_path), num_labels=2, load_tokenizer=False)


def test_generation_past_the_learned_positions_is_refused(gpt2):
  _, pre = gpt2
  ids, mask = dc.left_padded([5, 2, 7], 7, pre.config.vocab_size, seed=3)
  with pytest.raises(ValueError, match='= 66 exceeds the 64 learned positions'):
    generate(pre.model, pre.params, ids, mask, GenerationConfig(max_new_tokens=60))

"""Prompt tuning with `insert_at='embeddings_output'` (AdapterHub's placement) on our BERT/RoBERTa
against transformers' PyTorch models in float64: the embeddings module runs on the real tokens
alone (positions unshifted, LayerNorm), the prompt is concatenated to its output, and the encoder
runs with ones in front of the mask."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from adapters_jax.methods import PromptTuningConfig
from adapters_jax.models import DecoderLM, load_pretrained
from adapters_jax.splicing.sites import SiteMatchError
from adapters_jax.splicing.splice import add_adapter
from tests.models import decoder_checkpoints as dc
from tests.models.tiny_decoders import TINY_DECODERS

P = 4
SITE = 'embeddings/embeddings_output'


@pytest.fixture(scope='module', params=['bert', 'roberta'])
def encoder(request, tmp_path_factory):
  """`(torch model in float64, our pretrained, ids, mask, types)`; row 1 right-padded."""
  family = request.param
  common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=40, attn_implementation='eager')
  torch.manual_seed(0)
  if family == 'bert':
    torch_model = transformers.BertModel(transformers.BertConfig(**common, type_vocab_size=2))
  else:
    torch_model = transformers.RobertaModel(transformers.RobertaConfig(**common, pad_token_id=1,
                                                                       type_vocab_size=1))
  with torch.no_grad():
    for name, param in torch_model.named_parameters():
      if 'LayerNorm' in name:
        param.uniform_(0.5, 1.5)  # LayerNorm scale and bias far from 1 and 0: seen in the output
  directory = tmp_path_factory.mktemp(family)
  torch_model.eval().save_pretrained(str(directory), safe_serialization=True)
  pre = load_pretrained(str(directory), load_tokenizer=False)
  pad = torch_model.config.pad_token_id
  ids = np.random.default_rng(0).integers(3, 99, (3, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:], ids[1, 5:] = 0, pad
  types = np.zeros_like(ids)
  if family == 'bert':
    types[:, 4:] = 1
  return torch_model.double(), pre, ids, mask, types


def _with_prompt(pre, ids, mask, types, length=P, combine='prefix'):
  method = PromptTuningConfig(length=length, combine=combine, insert_at='embeddings_output')
  return add_adapter(pre.model, pre.params, 'p', method, jax.random.key(3), ids, mask, types)


def _prompt(params):
  flat = traverse_util.flatten_dict(params, sep='/')
  return np.asarray(flat[f'{SITE}/adapters/p/prompt'], np.float64)  # [P, hidden]


def _reference(torch_model, prompt, ids, mask, types, combine):
  """Last hidden states [batch, P + seq, hidden] in float64, computed as AdapterHub's hook does."""
  ids_t, types_t = torch.from_numpy(ids).long(), torch.from_numpy(types).long()
  grown = np.concatenate([np.ones((ids.shape[0], P), mask.dtype), mask], axis=1)
  with torch.no_grad():
    embedded = torch_model.embeddings(input_ids=ids_t, token_type_ids=types_t)  # real tokens only
    tiled = torch.from_numpy(prompt)[None].expand(ids.shape[0], -1, -1)
    if combine == 'prefix':
      hidden = torch.cat([tiled, embedded], 1)
    else:
      hidden = torch.cat([embedded[:, :1], tiled, embedded[:, 1:]], 1)
    additive = (1.0 - torch.from_numpy(grown).double())[:, None, None, :] * -1e9  # [b, 1, 1, P + seq]
    out = torch_model.encoder(hidden, attention_mask=additive)
  return out.last_hidden_state.numpy(), grown.astype(bool)


@pytest.mark.parametrize('combine', ['prefix', 'prefix_after_bos'])
def test_prompt_after_the_embeddings_matches_torch_float64(encoder, combine):
  torch_model, pre, ids, mask, types = encoder
  spliced, params = _with_prompt(pre, ids, mask, types, combine=combine)
  prompt = _prompt(params)
  assert np.abs(prompt).max() > 0.1  # random, non-zero
  ours = np.asarray(spliced.apply(params, ids, mask, types, active='p').last_hidden_state)
  assert ours.shape == (3, 9 + P, 32)
  expected, real = _reference(torch_model, prompt, ids, mask, types, combine)
  np.testing.assert_allclose(ours[real], expected[real], atol=2e-5, rtol=2e-5)
  # The other placement (before positions and LayerNorm) gives other states: the test sees where.
  before = PromptTuningConfig(length=P, combine=combine)
  other, other_params = add_adapter(pre.model, pre.params, 'p', before, jax.random.key(3), ids, mask,
                                    types)
  flat = traverse_util.flatten_dict(other_params, sep='/')
  flat['embeddings/input_embeddings/adapters/p/prompt'] = prompt.astype(np.float32)
  moved = other.apply(traverse_util.unflatten_dict(flat, sep='/'), ids, mask, types, active='p')
  assert np.abs(np.asarray(moved.last_hidden_state)[real] - expected[real]).max() > 1e-2


def test_zero_length_prompt_is_the_base_model(encoder):
  _, pre, ids, mask, types = encoder
  spliced, params = _with_prompt(pre, ids, mask, types, length=0)
  with_prompt = spliced.apply(params, ids, mask, types, active='p').last_hidden_state
  base = pre.model.apply({'params': pre.params}, ids, mask, types).last_hidden_state
  np.testing.assert_array_equal(with_prompt, base)


def test_padded_row_equals_the_row_alone(encoder):
  _, pre, ids, mask, types = encoder
  spliced, params = _with_prompt(pre, ids, mask, types)
  batch = spliced.apply(params, ids, mask, types, active='p').last_hidden_state
  alone = spliced.apply(params, ids[1:2, :5], mask[1:2, :5], types[1:2, :5],
                        active='p').last_hidden_state
  np.testing.assert_allclose(batch[1, :5 + P], alone[0], atol=1e-5)


def test_a_host_without_the_site_is_refused_naming_the_option():
  model = DecoderLM(TINY_DECODERS['llama'])
  ids, mask = dc.left_padded([5, 3], 5, model.config.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), ids, mask)['params']
  method = PromptTuningConfig(length=P, insert_at='embeddings_output')
  with pytest.raises(SiteMatchError,
                     match=r"insert_at='embeddings_output'.*use insert_at='input_embeddings'"):
    add_adapter(model, params, 'p', method, jax.random.key(1), ids, mask)


def test_an_unknown_insert_at_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"'input_embeddings', 'embeddings_output'"):
    PromptTuningConfig(insert_at='after_layer_norm')

"""Our T5 against transformers' PyTorch `T5ForConditionalGeneration` (the independent reference):
the test builds the torch model, saves it with `save_pretrained(safe_serialization=True)`, loads the
directory with our loader and compares logits, encoder padding included."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from adapters_jax.models import (
    CheckpointMismatchError,
    T5Config,
    T5ForConditionalGeneration,
    load_pretrained,
    read_safetensors,
    shift_right,
)
from tests.models.t5_reference import TINY_T5, encoder_batch, save, torch_logits, torch_t5


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """`{version: (torch model, checkpoint directory)}`."""
  out = {}
  for version in ('v1.0', 'v1.1'):
    model = torch_t5(version)
    out[version] = model, save(model, tmp_path_factory.mktemp(version.replace('.', '_')))
  return out


@pytest.fixture(params=['v1.0', 'v1.1'])
def checkpoint(request, checkpoints):
  return (request.param, *checkpoints[request.param])


def _decoder_inputs(batch=3, length=13, seed=1):
  rng = np.random.default_rng(seed)
  labels = rng.integers(2, TINY_T5['vocab_size'], (batch, length)).astype(np.int32)
  labels[2, 9:] = -100  # ignored label positions become pad tokens
  return labels


def test_logits_match_torch(checkpoint):
  version, torch_model, directory = checkpoint
  pre = load_pretrained(str(directory), load_tokenizer=False)  # family from config.json
  assert isinstance(pre.model, T5ForConditionalGeneration)
  assert pre.config.is_gated == (version == 'v1.1')
  assert pre.config.tie_word_embeddings == (version == 'v1.0')
  assert ('lm_head' in pre.params) == (version == 'v1.1')
  ids, mask = encoder_batch()
  assert mask.min() == 0  # encoder padding is exercised
  decoder_ids = np.asarray(shift_right(_decoder_inputs(), pre.config))
  ref = torch_logits(torch_model, ids, mask, decoder_ids)  # [batch, tgt, vocab]
  ours = pre.model.apply({'params': pre.params}, ids, mask, decoder_ids)
  assert ours.dtype == jnp.float32 and ours.shape == ref.shape
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


def test_shift_right_matches_torch(checkpoint):
  _, torch_model, _ = checkpoint
  labels = _decoder_inputs()
  ref = torch_model._shift_right(torch.tensor(labels, dtype=torch.long)).numpy()
  np.testing.assert_array_equal(shift_right(labels, T5Config(**_config_fields())), ref)


def _config_fields():
  return {k: v for k, v in TINY_T5.items() if k != 'dropout_rate'}


def test_bfloat16_close_to_float32(checkpoint):
  _, _, directory = checkpoint
  f32 = load_pretrained(str(directory), load_tokenizer=False)
  bf16 = load_pretrained(str(directory), load_tokenizer=False, dtype='bfloat16')
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(bf16.params))  # params stay float32
  ids, mask = encoder_batch()
  decoder_ids = np.asarray(shift_right(_decoder_inputs(), f32.config))
  a = f32.model.apply({'params': f32.params}, ids, mask, decoder_ids)
  b = bf16.model.apply({'params': bf16.params}, ids, mask, decoder_ids)
  assert b.dtype == jnp.float32
  assert float(jnp.linalg.norm(b - a) / jnp.linalg.norm(a)) <= 2e-2


def test_config_that_does_not_fit_the_file_lists_every_difference(checkpoints, tmp_path):
  _, directory = checkpoints['v1.0']  # a v1.0 file read with a v1.1 config
  hf_config = json.loads((directory / 'config.json').read_text())
  hf_config.update(feed_forward_proj='gated-gelu', tie_word_embeddings=False)
  (tmp_path / 'config.json').write_text(json.dumps(hf_config))
  (tmp_path / 'model.safetensors').write_bytes((directory / 'model.safetensors').read_bytes())
  with pytest.raises(CheckpointMismatchError) as error:
    load_pretrained(str(tmp_path), load_tokenizer=False)
  message = str(error.value)
  # 3 encoder + 2 decoder blocks lack `wi_1`; the untied head lacks `lm_head.weight`.
  assert 'missing (in the model, not in the file): 6' in message
  for stack, depth in (('encoder', 3), ('decoder', 2)):
    for i in range(depth):
      assert f'{stack}/layer_{i}/ffn/intermediate_linear/kernel' in message
  assert 'lm_head/kernel' in message and 'feed_forward_proj' in message


def test_bad_configs_name_the_fix(tmp_path):
  with pytest.raises(ValueError, match=r"'gated-swishy'.*valid values: \[.*'relu'.*'gated-gelu'"):
    T5Config(feed_forward_proj='gated-swishy')
  with pytest.raises(ValueError, match='valid fields: .*d_model'):
    T5Config.from_hf_config({'model_type': 't5'}, d_modle=8)
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'bart'}))
  with pytest.raises(ValueError, match=r"supported model types: \['bert', 'roberta', 't5', 'gpt2'"):
    load_pretrained(str(tmp_path), load_tokenizer=False)


def test_t5_takes_no_classification_head(checkpoints):
  _, directory = checkpoints['v1.0']
  with pytest.raises(ValueError, match='pass num_labels=None'):
    load_pretrained(str(directory), num_labels=2, load_tokenizer=False)
  with pytest.raises(ValueError, match='pass head=None'):
    load_pretrained(str(directory), head='classification', load_tokenizer=False)


def test_hub_layout_with_embedding_copies_loads(checkpoints, tmp_path):
  """Hub files of tied T5s (t5-small) also carry `encoder/decoder.embed_tokens.weight` and
  `lm_head.weight`, copies of `shared.weight`: they are recognised and ignored."""
  _, directory = checkpoints['v1.0']
  tensors = read_safetensors(directory)
  copies = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight', 'lm_head.weight')
  assert not set(copies) & set(tensors)  # save_pretrained writes the shared tensor once
  tensors.update({name: tensors['shared.weight'] for name in copies})
  save_file(tensors, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  (tmp_path / 'config.json').write_text((directory / 'config.json').read_text())
  pre = load_pretrained(str(tmp_path), load_tokenizer=False)
  assert sorted(pre.report.ignored) == sorted(copies)
  reference = load_pretrained(str(directory), load_tokenizer=False)
  same = jax.tree_util.tree_map(np.array_equal, pre.params, reference.params)
  assert all(jax.tree_util.tree_leaves(same))

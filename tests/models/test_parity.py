"""Our encoder vs transformers 4.57.6 Flax models (independent references), same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from transformers.models.roberta.modeling_flax_roberta import create_position_ids_from_input_ids

from adapters_jax.models import EncoderConfig, load_pretrained, position_ids_for

SENTENCES = [
    'The movie was great.',
    'Adapters let one frozen backbone serve many tasks with a few extra parameters each.',
    'Short.',
    'A rather long review that goes on about the plot, the actors, the music and the ending.',
]


@pytest.fixture(scope='module')
def minilm():
  pre = load_pretrained('minilm-l6')
  batch = dict(pre.tokenizer(SENTENCES, padding=True, return_tensors='np'))
  return pre, batch


def _masked_max_diff(a, b, mask):
  return float(np.abs(np.where(mask[..., None].astype(bool), a - b, 0.0)).max())


def test_minilm_matches_flax_bert(minilm):
  pre, batch = minilm
  assert batch['attention_mask'].min() == 0  # padding is exercised
  hf = transformers.FlaxBertModel.from_pretrained(str(pre.directory))
  ref = hf(**batch)
  ours = pre.model.apply({'params': pre.params}, batch['input_ids'], batch['attention_mask'],
                         batch['token_type_ids'])
  assert ours.last_hidden_state.dtype == jnp.float32
  assert _masked_max_diff(ours.last_hidden_state, ref.last_hidden_state,
                          batch['attention_mask']) <= 1e-4
  np.testing.assert_allclose(ours.pooled, ref.pooler_output, atol=1e-4)


def test_minilm_bfloat16_close_to_float32(minilm):
  pre, batch = minilm
  args = (batch['input_ids'], batch['attention_mask'], batch['token_type_ids'])
  f32 = pre.model.apply({'params': pre.params}, *args).last_hidden_state
  bf16_model = pre.model.clone(config=pre.config.replace(dtype='bfloat16'))
  bf16 = bf16_model.apply({'params': pre.params}, *args).last_hidden_state
  assert bf16.dtype == jnp.float32
  mask = batch['attention_mask'][..., None].astype(bool)
  err = np.linalg.norm(np.where(mask, bf16 - f32, 0)) / np.linalg.norm(np.where(mask, f32, 0))
  assert err <= 1e-2, err


def _roberta_inputs(pad_id):
  ids = np.array([[0, 5, 6, 7, 8, 9, 2], [0, 11, 12, 2, pad_id, pad_id, pad_id]], np.int32)
  return ids, (ids != pad_id).astype(np.int32)


def test_roberta_matches_flax_roberta(tmp_path, tiny_hf_config, write_checkpoint):
  config = transformers.RobertaConfig(**tiny_hf_config, type_vocab_size=1, pad_token_id=1)
  hf = transformers.FlaxRobertaModel(config, seed=3)
  directory = write_checkpoint(hf, tmp_path / 'roberta')
  pre = load_pretrained(str(directory), load_tokenizer=False)
  assert pre.config.model_type == 'roberta' and pre.config.position_offset == 2
  ids, mask = _roberta_inputs(config.pad_token_id)
  ref = hf(ids, mask).last_hidden_state
  ours = pre.model.apply({'params': pre.params}, ids, mask).last_hidden_state
  assert _masked_max_diff(ours, ref, mask) <= 1e-4


def test_roberta_position_ids_match_hf():
  config = EncoderConfig.from_hf_config({'model_type': 'roberta', 'pad_token_id': 1})
  ids, _ = _roberta_inputs(1)
  np.testing.assert_array_equal(position_ids_for(jnp.asarray(ids), config),
                                create_position_ids_from_input_ids(ids, 1))


@pytest.mark.parametrize('family', ['bert', 'roberta'])
def test_classification_logits_match_hf(family, tmp_path, tiny_hf_config, write_checkpoint):
  if family == 'bert':
    config = transformers.BertConfig(**tiny_hf_config, num_labels=3)
    hf = transformers.FlaxBertForSequenceClassification(config, seed=1)
    ids, mask = np.array([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]], np.int32), None
    mask = (ids != 0).astype(np.int32)
  else:
    config = transformers.RobertaConfig(**tiny_hf_config, type_vocab_size=1, pad_token_id=1,
                                        num_labels=3)
    hf = transformers.FlaxRobertaForSequenceClassification(config, seed=1)
    ids, mask = _roberta_inputs(1)
  directory = write_checkpoint(hf, tmp_path / family)
  pre = load_pretrained(str(directory), head='classification', load_tokenizer=False)
  assert pre.report.fresh == ()  # every head weight came from the file
  logits = pre.model.apply({'params': pre.params}, ids, mask)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, hf(ids, mask).logits, atol=1e-4)


def test_jit_and_grad_run(minilm):
  pre, batch = minilm
  model = pre.model.clone(config=pre.config.replace(num_layers=1))
  params = {**pre.params, 'encoder': {'layer_0': pre.params['encoder']['layer_0']}}
  loss = lambda p: model.apply({'params': p}, batch['input_ids'],
                               batch['attention_mask']).pooled.sum()
  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))

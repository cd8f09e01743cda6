"""Checkpoint import: name mapping, full-diff errors, refusals, registry, identity."""

import json

import jax
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

from adapters_jax.models import (
    SHORT_NAMES,
    CheckpointMismatchError,
    base_model_identity,
    hf_name_to_ours,
    load_pretrained,
    read_safetensors,
    resolve_checkpoint_dir,
)


@pytest.fixture
def bert_dir(tmp_path, tiny_hf_config, write_checkpoint):
  hf = transformers.FlaxBertModel(transformers.BertConfig(**tiny_hf_config), seed=0)
  return write_checkpoint(hf, tmp_path / 'bert')


@pytest.mark.parametrize('hf_name, ours', [
    ('bert.encoder.layer.3.attention.self.key.weight', 'encoder/layer_3/attention/key/kernel'),
    ('encoder.layer.0.attention.output.dense.bias', 'encoder/layer_0/attention/output/bias'),
    ('roberta.encoder.layer.1.attention.output.LayerNorm.gamma',
     'encoder/layer_1/attention_layer_norm/scale'),
    ('encoder.layer.1.output.LayerNorm.beta', 'encoder/layer_1/ffn_layer_norm/bias'),
    ('encoder.layer.2.intermediate.dense.weight', 'encoder/layer_2/ffn/intermediate/kernel'),
    ('encoder.layer.2.output.dense.weight', 'encoder/layer_2/ffn/output/kernel'),
    ('embeddings.token_type_embeddings.weight', 'embeddings/token_type_embeddings/embedding'),
    ('embeddings.LayerNorm.weight', 'embeddings/layer_norm/scale'),
    ('classifier.weight', 'classifier/dense/kernel'),
    ('classifier.out_proj.bias', 'classifier/out_proj/bias'),
])
def test_name_mapping(hf_name, ours):
  assert hf_name_to_ours(hf_name)[0] == ours


def test_linear_weights_are_transposed():
  w = np.arange(6.0).reshape(2, 3)  # torch [out, in]
  _, transform = hf_name_to_ours('pooler.dense.weight')
  np.testing.assert_array_equal(transform(w), w.T)


def test_mismatch_error_lists_every_difference(bert_dir):
  tensors = load_file(str(bert_dir / 'model.safetensors'))
  del tensors['encoder.layer.1.attention.self.value.bias']
  tensors['encoder.layer.0.intermediate.dense.weight'] = np.zeros((40, 32), np.float32)
  tensors['encoder.layer.0.attention.self.rotary.weight'] = np.zeros((2,), np.float32)
  tensors['encoder.layer.5.output.dense.bias'] = np.zeros((32,), np.float32)
  save_file(tensors, str(bert_dir / 'model.safetensors'))
  with pytest.raises(CheckpointMismatchError) as err:
    load_pretrained(str(bert_dir), load_tokenizer=False)
  message = str(err.value)
  for expected in ('encoder/layer_1/attention/value/bias',
                   'encoder.layer.0.intermediate.dense.weight', '(40, 32)',
                   'encoder.layer.0.attention.self.rotary.weight',
                   'encoder.layer.5.output.dense.bias'):
    assert expected in message, message


def test_absent_pooler_and_head_are_initialised_fresh(bert_dir):
  tensors = load_file(str(bert_dir / 'model.safetensors'))
  tensors = {k: v for k, v in tensors.items() if not k.startswith('pooler.')}
  save_file(tensors, str(bert_dir / 'model.safetensors'))
  pre = load_pretrained(str(bert_dir), head='classification', num_labels=4,
                        load_tokenizer=False)
  assert set(pre.report.fresh) == {'pooler/dense/kernel', 'pooler/dense/bias',
                                   'classifier/dense/kernel', 'classifier/dense/bias'}
  assert pre.params['classifier']['dense']['kernel'].shape == (32, 4)


def test_head_in_file_is_skipped_by_encoder_only_model(tmp_path, tiny_hf_config, write_checkpoint):
  hf = transformers.FlaxBertForSequenceClassification(
      transformers.BertConfig(**tiny_hf_config), seed=0)
  directory = write_checkpoint(hf, tmp_path / 'cls')
  pre = load_pretrained(str(directory), load_tokenizer=False)
  assert set(pre.report.skipped) == {'classifier.weight', 'classifier.bias'}


def test_pickle_only_directory_is_refused(bert_dir):
  (bert_dir / 'model.safetensors').rename(bert_dir / 'pytorch_model.bin')
  with pytest.raises(FileNotFoundError, match='pytorch_model.bin.*safe_serialization=True'):
    load_pretrained(str(bert_dir), load_tokenizer=False)


def test_sharded_checkpoint(bert_dir):
  tensors = load_file(str(bert_dir / 'model.safetensors'))
  names = sorted(tensors)
  shards = {'model-00001-of-00002.safetensors': names[::2],
            'model-00002-of-00002.safetensors': names[1::2]}
  weight_map = {}
  for shard, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, str(bert_dir / shard))
    weight_map.update(dict.fromkeys(keys, shard))
  (bert_dir / 'model.safetensors').unlink()
  (bert_dir / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
  assert sorted(read_safetensors(bert_dir)) == names
  load_pretrained(str(bert_dir), load_tokenizer=False)


def test_unknown_short_name_lists_the_names():
  with pytest.raises(ValueError, match='minilm-l6') as err:
    resolve_checkpoint_dir('minilm-l7')
  assert all(name in str(err.value) for name in SHORT_NAMES)


def test_short_names_resolve_without_import():
  for name in SHORT_NAMES:
    assert (resolve_checkpoint_dir(name) / 'config.json').is_file()


def test_identity(bert_dir):
  plain = load_pretrained(str(bert_dir), load_tokenizer=False)
  scanned = load_pretrained(str(bert_dir), scan_layers=True, head='classification',
                            load_tokenizer=False)
  assert plain.identity.fingerprint == scanned.identity.fingerprint
  assert plain.identity.weights_sha256 == scanned.identity.weights_sha256
  one_layer = {**plain.params, 'encoder': {'layer_0': plain.params['encoder']['layer_0']}}
  assert base_model_identity('x', one_layer).fingerprint != plain.identity.fingerprint
  shapes = jax.eval_shape(lambda p: p, plain.params)
  assert base_model_identity('x', shapes).fingerprint == plain.identity.fingerprint

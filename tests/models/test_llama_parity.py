"""Llama-family decoders vs transformers' PyTorch models (the reference), same weights.

Each test builds the torch model with a fixed seed, saves it with `save_pretrained`
(safetensors), loads the directory with our loader and compares logits on a left-padded batch
at every real position.
"""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from adapters_jax.models import CheckpointMismatchError, DecoderConfig, load_pretrained
from tests.models import decoder_checkpoints as dc

LENGTHS, SEQ = [9, 5, 12], 12

CASES = {
    # GQA (4 query heads, 2 key/value heads) with llama3 RoPE scaling (all three bands).
    'llama-gqa-llama3': ('llama', dict(rope_scaling=dict(
        rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    'llama-linear': ('llama', dict(rope_scaling=dict(type='linear', factor=2.0),
                                   attention_bias=True, mlp_bias=True)),
    # max_position_embeddings 8 < 12 positions: the dynamic NTK base grows.
    'llama-dynamic': ('llama', dict(rope_scaling=dict(rope_type='dynamic', factor=2.0),
                                    max_position_embeddings=8)),
    'qwen2': ('qwen2', {}),
    # sliding window 4 < 12 tokens: the window is exercised.
    'mistral-window': ('mistral', {}),
    'gemma-tied': ('gemma', {}),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_logits_match_torch_on_left_padded_batch(case, tmp_path):
  family, overrides = CASES[case]
  torch_model = dc.torch_model(family, **overrides)
  # Gemma is also saved in shards, so the index.json path is covered.
  shard = '20KB' if family == 'gemma' else None
  dc.save(torch_model, tmp_path, max_shard_size=shard)
  if shard:
    assert (tmp_path / 'model.safetensors.index.json').is_file()
  pre = load_pretrained(str(tmp_path), load_tokenizer=False)
  assert pre.config.model_type == family
  ids, mask = dc.left_padded(LENGTHS, SEQ, pre.config.vocab_size)
  reference = dc.torch_logits(torch_model, ids, mask)
  ours = pre.model.apply({'params': pre.params}, ids, mask)
  assert ours.shape == reference.shape and ours.dtype == np.float32
  assert dc.max_diff_at(ours, reference, mask) <= 1e-4


def test_config_switches_read_from_config_json(tmp_path):
  """The family differences land in the config (each parity case above depends on them)."""
  expected = {
      'qwen2': dict(qkv_bias=True, attention_output_bias=False, sliding_window=None),
      'mistral': dict(sliding_window=4, num_kv_heads=2, qkv_bias=False),
      'gemma': dict(norm_unit_offset=True, scale_embeddings=True, tie_word_embeddings=True,
                    head_dim=24, hidden_act='gelu_pytorch_tanh'),
      'llama': dict(norm_unit_offset=False, tie_word_embeddings=False, head_dim=16),
  }
  for family, fields in expected.items():
    dc.torch_model(family).config.to_json_file(str(tmp_path / f'{family}.json'))
    config = DecoderConfig.from_hf_config(json.loads((tmp_path / f'{family}.json').read_text()))
    assert {k: getattr(config, k) for k in fields} == fields, family


def test_unsupported_rope_scaling_lists_supported_types():
  hf = dict(model_type='llama', rope_scaling=dict(rope_type='yarn', factor=4.0))
  with pytest.raises(ValueError, match=r"'yarn'.*\['default', 'linear', 'dynamic', 'llama3'\]"):
    DecoderConfig.from_hf_config(hf)


def test_qwen2_sliding_window_is_refused_with_the_setting_named():
  with pytest.raises(ValueError, match='use_sliding_window=True'):
    DecoderConfig.from_hf_config(dict(model_type='qwen2', use_sliding_window=True,
                                      sliding_window=8))


def test_wrong_kv_heads_in_config_reports_every_mismatched_tensor(tmp_path):
  dc.save(dc.torch_model('llama'), tmp_path)
  config = json.loads((tmp_path / 'config.json').read_text())
  config['num_key_value_heads'] = 4  # the file has 2
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(CheckpointMismatchError) as err:
    load_pretrained(str(tmp_path), load_tokenizer=False)
  message = str(err.value)
  assert 'shape mismatch: 4' in message, message
  for layer in (0, 1):
    for proj, ours in (('k_proj', 'key'), ('v_proj', 'value')):
      assert (f'model.layers.{layer}.self_attn.{proj}.weight -> '
              f'decoder/layer_{layer}/attention/{ours}/kernel') in message, message
  assert 'num_key_value_heads' in message  # the closing hint names what to check


def test_missing_tensor_is_named_with_our_path(tmp_path):
  dc.save(dc.torch_model('llama'), tmp_path)
  tensors = load_file(str(tmp_path / 'model.safetensors'))
  del tensors['model.norm.weight']
  from safetensors.numpy import save_file
  save_file(tensors, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  with pytest.raises(CheckpointMismatchError, match=r'missing.*\n\s+decoder/final_layer_norm/scale'):
    load_pretrained(str(tmp_path), load_tokenizer=False)

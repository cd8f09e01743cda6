"""A `config.json` may leave out every key whose value is the transformers class default; each family's
`from_hf_config` must then read what transformers reads. The reference is transformers' own config
class: a config stripped of every key equal to `<Class>()`'s value loads to the same config as the
full one, and a RoBERTa checkpoint with such a config gives transformers' logits."""

import json

import numpy as np
import pytest
import torch
import transformers

from adapters_jax.models import EncoderConfig, T5Config, load_pretrained
from adapters_jax.models.decoder_config import DecoderConfig

SMALL_ENCODER = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48)
SMALL_LLAMA = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)
# (transformers class, our config class, non-default values a small checkpoint has)
FAMILIES = {
    'bert': (transformers.BertConfig, EncoderConfig, SMALL_ENCODER),
    'roberta': (transformers.RobertaConfig, EncoderConfig, SMALL_ENCODER),
    't5': (transformers.T5Config, T5Config,
           dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)),
    'gpt2': (transformers.GPT2Config, DecoderConfig, dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4)),
    'llama': (transformers.LlamaConfig, DecoderConfig, SMALL_LLAMA),
    'qwen2': (transformers.Qwen2Config, DecoderConfig, SMALL_LLAMA),
    'mistral': (transformers.MistralConfig, DecoderConfig, SMALL_LLAMA),
    'gemma': (transformers.GemmaConfig, DecoderConfig, {**SMALL_LLAMA, 'head_dim': 8}),
}


def stripped(hf_config: transformers.PretrainedConfig) -> dict:
  """`config.json` without every key whose value equals the class default (model_type stays)."""
  defaults = type(hf_config)().to_dict()
  return {k: v for k, v in hf_config.to_dict().items()
          if k == 'model_type' or k not in defaults or v != defaults[k]}


@pytest.mark.parametrize('small', [False, True], ids=['class_defaults', 'small_checkpoint'])
@pytest.mark.parametrize('family', list(FAMILIES))
def test_a_config_without_its_default_valued_keys_loads_as_the_full_one(family, small):
  hf_class, ours, values = FAMILIES[family]
  hf_config = hf_class(**values) if small else hf_class()
  short = stripped(hf_config)
  if not small:
    assert set(short) == {'model_type'}  # every default left out
  assert ours.from_hf_config(short) == ours.from_hf_config(hf_config.to_dict())


def test_roberta_without_pad_token_id_pads_with_1_and_counts_positions_from_2():
  # Before: a missing pad_token_id read as BERT's 0, so positions started at 1.
  config = EncoderConfig.from_hf_config({'model_type': 'roberta'})
  assert (config.pad_token_id, config.position_offset) == (transformers.RobertaConfig().pad_token_id, 2)


def test_a_roberta_checkpoint_with_a_stripped_config_gives_transformers_logits(tmp_path):
  torch.manual_seed(0)
  hf_config = transformers.RobertaConfig(**SMALL_ENCODER, max_position_embeddings=40, num_labels=2)
  model = transformers.RobertaForSequenceClassification(hf_config).eval()
  model.save_pretrained(tmp_path, safe_serialization=True)
  (tmp_path / 'config.json').write_text(json.dumps(stripped(hf_config)))
  assert 'pad_token_id' not in json.loads((tmp_path / 'config.json').read_text())
  ids = np.array([[0, 5, 6, 7, 2, 1, 1], [0, 8, 9, 10, 11, 12, 2]], np.int32)  # 1 = RoBERTa's pad
  mask = (ids != 1).astype(np.int32)
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
  pretrained = load_pretrained(str(tmp_path), head='classification', num_labels=2, load_tokenizer=False)
  ours = np.asarray(pretrained.model.apply({'params': pretrained.params}, ids, mask))  # [2, 2]
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

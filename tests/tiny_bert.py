"""A tiny BERT checkpoint on disk (random weights, the packaged MiniLM tokenizer), for runs in tests."""

import pathlib
import shutil

from transformers import BertConfig, FlaxBertModel

from adapters_jax.models import resolve_checkpoint_dir
from tests.models.conftest import write_hf_checkpoint

TOKENIZER_FILES = ('vocab.txt', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json')


def minilm_dir() -> pathlib.Path:
  return resolve_checkpoint_dir('minilm-l6')


def write_tiny_bert(directory: pathlib.Path) -> pathlib.Path:
  config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=128)
  write_hf_checkpoint(FlaxBertModel(config, seed=0), directory)
  for name in TOKENIZER_FILES:
    if (minilm_dir() / name).exists():
      shutil.copy(minilm_dir() / name, directory / name)
  return directory

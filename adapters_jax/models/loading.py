"""`load_pretrained`: one entry point for every backbone, dispatched on `config.json`'s model_type.

Encoders (BERT/RoBERTa) load through `hf_import`, decoders (GPT-2, Llama, Qwen2, Mistral, Gemma)
through `decoder_import`; both read safetensors only and report a full diff on mismatch.

Example:
  pre = load_pretrained('/path/to/gpt2_dir')            # DecoderLM with its LM head
  pre = load_pretrained('minilm-l6', head='classification', num_labels=2)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from adapters_jax.models import decoder_config, decoder_import, hf_import
from adapters_jax.models.registry import resolve_checkpoint_dir


def load_pretrained(
    name_or_path: str, *, head: str | None = None, num_labels: int | None = None,
    dtype: str = 'float32', remat: bool = False, scan_layers: bool = False, seed: int = 0,
    config_overrides: Mapping[str, Any] | None = None, revision: str | None = None,
    load_tokenizer: bool = True,
) -> hf_import.Pretrained:
  """Loads a checkpoint (short name, directory or hub id) as the backbone its model_type names.

  Args:
    head: None = the family's default (encoders: none; decoders: 'causal_lm'); encoders also
      take 'classification', decoders 'causal_lm'.
    num_labels, seed: encoder classification heads only (see `hf_import.load_pretrained`).
    Other arguments: as `hf_import.load_pretrained`; `config_overrides` are fields of the
    family's config (`EncoderConfig` or `DecoderConfig`).
  """
  directory = resolve_checkpoint_dir(name_or_path, revision=revision)
  config_path = directory / 'config.json'
  model_type = json.loads(config_path.read_text()).get('model_type') \
      if config_path.is_file() else None
  if model_type not in decoder_config.MODEL_TYPES:
    return hf_import.load_pretrained(
        name_or_path, head=head, num_labels=num_labels, dtype=dtype, remat=remat,
        scan_layers=scan_layers, seed=seed, config_overrides=config_overrides,
        revision=revision, load_tokenizer=load_tokenizer)
  if num_labels is not None:
    raise ValueError(f'num_labels is for classification heads; {model_type} loads as a causal '
                     "LM (head='causal_lm').")
  return decoder_import.load_decoder(
      directory, name=name_or_path, head=head or 'causal_lm', dtype=dtype, remat=remat,
      scan_layers=scan_layers, config_overrides=config_overrides,
      load_tokenizer=load_tokenizer)

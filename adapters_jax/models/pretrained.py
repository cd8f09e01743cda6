"""`load_pretrained`: any supported checkpoint, its family chosen by `config.json`'s `model_type`.

BERT/RoBERTa go to `bert_import.load_bert_pretrained`, T5 to `t5_import.load_t5_pretrained`,
decoders (GPT-2, Llama, Qwen2, Mistral, Gemma) to `decoder_import.load_decoder`. The name is resolved once
(short name, directory or hub id) and recorded as given in the returned identity.

Example:
  pre = load_pretrained('minilm-l6', head='classification', num_labels=2)   # BERT
  pre = load_pretrained('/path/to/t5-small')                                 # T5
  pre = load_pretrained('/path/to/gpt2')                                     # DecoderLM, LM head
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from adapters_jax.models import bert_import, decoder_config, decoder_import, t5_import
from adapters_jax.models.encoder_config import MODEL_TYPES as ENCODER_MODEL_TYPES
from adapters_jax.models.hf_files import Pretrained, read_hf_config
from adapters_jax.models.registry import resolve_checkpoint_dir

MODEL_TYPES = ENCODER_MODEL_TYPES + ('t5',) + tuple(decoder_config.MODEL_TYPES)


def load_pretrained(
    name_or_path: str, *, head: str | None = None, num_labels: int | None = None,
    dtype: str = 'float32', remat: bool = False, scan_layers: bool = False, seed: int = 0,
    config_overrides: Mapping[str, Any] | None = None, revision: str | None = None,
    load_tokenizer: bool = True,
) -> Pretrained:
  """Loads a checkpoint (short name, directory or hub id) with the loader of its family.

  Args:
    name_or_path: a `registry.SHORT_NAMES` key, a directory with config.json + safetensors, or a
      hub id 'owner/name'.
    head: BERT/RoBERTa: None or 'classification'. T5: None (the model includes its LM head).
      Decoders: None or 'causal_lm' (both give the LM head).
    num_labels: BERT/RoBERTa head size (see `bert_import.load_bert_pretrained`); T5 and decoders
      take none.
    dtype, remat, scan_layers: compute dtype and layer options of either family's config.
    seed: BERT/RoBERTa: initialises parts absent from the file (pooler, classifier).
    config_overrides: other fields of the family's config (`EncoderConfig`, `T5Config` or
      `DecoderConfig`).
    revision: hub revision for hub ids.
    load_tokenizer: load `AutoTokenizer` from the directory (never trust_remote_code).

  Returns:
    `Pretrained`; `identity.name` is `name_or_path` as given.
  """
  directory = resolve_checkpoint_dir(name_or_path, revision=revision)
  model_type = read_hf_config(directory).get('model_type')
  if model_type == 't5':
    if num_labels is not None:
      raise ValueError(f'num_labels={num_labels}: a T5 checkpoint has no classification head '
                       '(it predicts label words); pass num_labels=None.')
    pre = t5_import.load_t5_pretrained(
        str(directory), head=head, dtype=dtype, remat=remat, scan_layers=scan_layers,
        config_overrides=config_overrides, load_tokenizer=load_tokenizer)
  elif model_type in decoder_config.MODEL_TYPES:
    if num_labels is not None:
      raise ValueError(f'num_labels is for classification heads; {model_type} loads as a causal '
                       "LM (head='causal_lm').")
    pre = decoder_import.load_decoder(
        directory, name=name_or_path, head=head or 'causal_lm', dtype=dtype, remat=remat,
        scan_layers=scan_layers, config_overrides=config_overrides,
        load_tokenizer=load_tokenizer)
  elif model_type is None or model_type in ENCODER_MODEL_TYPES:  # None: its error names the fix
    pre = bert_import.load_bert_pretrained(
        str(directory), head=head, num_labels=num_labels, dtype=dtype, remat=remat,
        scan_layers=scan_layers, seed=seed, config_overrides=config_overrides,
        load_tokenizer=load_tokenizer)
  else:
    raise ValueError(f'{directory / "config.json"} has model_type={model_type!r}; supported '
                     f'model types: {list(MODEL_TYPES)}.')
  identity = dataclasses.replace(pre.identity, name=name_or_path)
  return dataclasses.replace(pre, identity=identity)

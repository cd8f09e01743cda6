"""`DecoderLM` params -> a Hugging Face checkpoint folder (Llama-family names, safetensors).

The inverse of `decoder_import`'s Llama table: `config.json` + `model.safetensors`, plus the
files of a tokenizer, give a folder that `load_pretrained` (and transformers' PyTorch
`LlamaForCausalLM`) reads. Its use here: a randomly initialised small Llama for runs and tests
that cannot download pretrained decoder weights (`random_decoder_checkpoint`).

Example:
  random_decoder_checkpoint('workdirs/tiny_llama', TINY_LLAMA, tokenizer_dir=minilm_dir, seed=0)
  pre = load_pretrained('workdirs/tiny_llama')     # DecoderLM with those weights
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from adapters_jax.models import decoder, scan_layout
from adapters_jax.models.decoder_config import DecoderConfig
from adapters_jax.models.hf_files import write_hf_checkpoint

# Our '/'-path suffix of a block -> Llama's name inside `model.layers.{i}.`; kernels transpose.
_BLOCK = {
    'attention/query/kernel': 'self_attn.q_proj.weight',
    'attention/key/kernel': 'self_attn.k_proj.weight',
    'attention/value/kernel': 'self_attn.v_proj.weight',
    'attention/output/kernel': 'self_attn.o_proj.weight',
    'ffn/gate/kernel': 'mlp.gate_proj.weight',
    'ffn/intermediate/kernel': 'mlp.up_proj.weight',
    'ffn/output/kernel': 'mlp.down_proj.weight',
    'attention_layer_norm/scale': 'input_layernorm.weight',
    'ffn_layer_norm/scale': 'post_attention_layernorm.weight',
}
_TOP = {
    'embeddings/word_embeddings/embedding': 'model.embed_tokens.weight',
    'decoder/final_layer_norm/scale': 'model.norm.weight',
    'lm_head/kernel': 'lm_head.weight',
}


def llama_tensors(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """HF Llama tensors (`model.layers.0.self_attn.q_proj.weight` `[out, in]`, ...) of `params`
  (plain layout, without adapters or biases).

  Raises:
    ValueError: a param with no Llama name (biases, GPT-2's learned positions, adapters).
  """
  if scan_layout.is_scanned(dict(params)):
    params = scan_layout.unstack_layers(dict(params))
  tensors, unnamed = {}, []
  for path, value in traverse_util.flatten_dict(dict(params), sep='/').items():
    value = np.asarray(value, np.float32)
    parts = path.split('/')
    if path in _TOP:
      name = _TOP[path]
    elif parts[0] == 'decoder' and parts[1].startswith('layer_') and '/'.join(parts[2:]) in _BLOCK:
      name = f'model.layers.{parts[1][len("layer_"):]}.{_BLOCK["/".join(parts[2:])]}'
    else:
      unnamed.append(path)
      continue
    tensors[name] = np.ascontiguousarray(value.T if path.endswith('/kernel') else value)
  if unnamed:
    raise ValueError(f'No Llama checkpoint name for {unnamed}; only bias-free Llama params '
                     '(no adapters) can be written.')
  return tensors


def write_llama_checkpoint(directory: str | pathlib.Path, hf_config: Mapping[str, Any],
                           params: Mapping[str, Any],
                           tokenizer_dir: str | pathlib.Path | None = None) -> pathlib.Path:
  """Writes `config.json` (`hf_config`), `model.safetensors` and the tokenizer's files."""
  return write_hf_checkpoint(directory, hf_config, llama_tensors(params), tokenizer_dir)


def random_decoder_checkpoint(directory: str | pathlib.Path, hf_config: Mapping[str, Any], *,
                              tokenizer_dir: str | pathlib.Path, seed: int) -> pathlib.Path:
  """A Llama-family checkpoint with weights drawn by `DecoderLM.init` from `seed`.

  `hf_config` is a `config.json` dict (`model_type` 'llama', sizes, special token ids); its
  vocabulary must cover the tokenizer's.
  """
  config = DecoderConfig.from_hf_config(dict(hf_config))
  if config.model_type != 'llama':
    raise ValueError(f"random_decoder_checkpoint writes Llama checkpoints; got model_type="
                     f"{config.model_type!r}.")
  model = decoder.DecoderLM(config)
  params = jax.jit(model.init)(jax.random.key(seed), jnp.ones((1, 2), jnp.int32))['params']
  return write_llama_checkpoint(directory, hf_config, params, tokenizer_dir)

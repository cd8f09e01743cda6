"""Hugging Face GPT-2 / Llama / Qwen2 / Mistral / Gemma checkpoints -> `DecoderLM` params.

Explicit name-mapping tables (one per family), applied by `hf_convert.convert_hf_tensors`, which
reports every missing, unexpected and mis-shaped name at once; tensors are read by
`hf_files.read_safetensors` (single file or sharded `model.safetensors.index.json`; never
pickles). GPT-2's fused `c_attn` (a Conv1D, weight `[in, 3 * hidden]`) is split into our
`query`/`key`/`value` before mapping, so adapter sites see three projections, as in the LoRA
paper's GPT-2 experiments. A tied head (`tie_word_embeddings`) reads the token embeddings; a
`lm_head.weight` a tied checkpoint carries anyway is ignored.

Example:
  pre = load_decoder('/path/to/llama_dir')
  logits = pre.model.apply({'params': pre.params}, ids, mask)   # [batch, seq, vocab]
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from adapters_jax.models import decoder, hf_files
from adapters_jax.models.decoder_config import DecoderConfig
from adapters_jax.models.hf_convert import LoadReport, merge_into_model
from adapters_jax.models.hf_files import (
  BaseModelIdentity,
  Pretrained,
  base_model_identity,
  read_hf_config,
  read_safetensors,
  weights_sha256,
)

HEADS = ('causal_lm',)
_T = lambda w: np.ascontiguousarray(w.T)  # torch Linear weight [out, in] -> kernel [in, out]
_ID = lambda w: w
_LAYER = r'decoder/layer_\1/'

# (regex over the HF name without `transformer.`, our '/'-path template, transform); GPT-2's
# Conv1D weights are already [in, out]. `c_attn.*[query]` etc. are the split fused projection.
GPT2_TO_OURS: tuple[tuple[str, str, Callable[[np.ndarray], np.ndarray]], ...] = (
    (r'^wte\.weight$', 'embeddings/word_embeddings/embedding', _ID),
    (r'^wpe\.weight$', 'embeddings/position_embeddings/embedding', _ID),
    (r'^h\.(\d+)\.ln_1\.weight$', _LAYER + 'attention_layer_norm/scale', _ID),
    (r'^h\.(\d+)\.ln_1\.bias$', _LAYER + 'attention_layer_norm/bias', _ID),
    (r'^h\.(\d+)\.attn\.c_attn\.weight\[(query|key|value)\]$', _LAYER + r'attention/\2/kernel',
     _ID),
    (r'^h\.(\d+)\.attn\.c_attn\.bias\[(query|key|value)\]$', _LAYER + r'attention/\2/bias', _ID),
    (r'^h\.(\d+)\.attn\.c_proj\.weight$', _LAYER + 'attention/output/kernel', _ID),
    (r'^h\.(\d+)\.attn\.c_proj\.bias$', _LAYER + 'attention/output/bias', _ID),
    (r'^h\.(\d+)\.ln_2\.weight$', _LAYER + 'ffn_layer_norm/scale', _ID),
    (r'^h\.(\d+)\.ln_2\.bias$', _LAYER + 'ffn_layer_norm/bias', _ID),
    (r'^h\.(\d+)\.mlp\.c_fc\.weight$', _LAYER + 'ffn/intermediate/kernel', _ID),
    (r'^h\.(\d+)\.mlp\.c_fc\.bias$', _LAYER + 'ffn/intermediate/bias', _ID),
    (r'^h\.(\d+)\.mlp\.c_proj\.weight$', _LAYER + 'ffn/output/kernel', _ID),
    (r'^h\.(\d+)\.mlp\.c_proj\.bias$', _LAYER + 'ffn/output/bias', _ID),
    (r'^ln_f\.weight$', 'decoder/final_layer_norm/scale', _ID),
    (r'^ln_f\.bias$', 'decoder/final_layer_norm/bias', _ID),
    (r'^lm_head\.weight$', 'lm_head/kernel', _T),
)
_LLAMA_PROJECTIONS = (('self_attn', 'q_proj', 'attention/query'),
                      ('self_attn', 'k_proj', 'attention/key'),
                      ('self_attn', 'v_proj', 'attention/value'),
                      ('self_attn', 'o_proj', 'attention/output'),
                      ('mlp', 'gate_proj', 'ffn/gate'),
                      ('mlp', 'up_proj', 'ffn/intermediate'),
                      ('mlp', 'down_proj', 'ffn/output'))
# Llama, Qwen2, Mistral and Gemma share these names (without the `model.` prefix).
LLAMA_TO_OURS: tuple[tuple[str, str, Callable[[np.ndarray], np.ndarray]], ...] = (
    (r'^embed_tokens\.weight$', 'embeddings/word_embeddings/embedding', _ID),
    *((rf'^layers\.(\d+)\.{block}\.{hf}\.weight$', _LAYER + f'{ours}/kernel', _T)
      for block, hf, ours in _LLAMA_PROJECTIONS),
    *((rf'^layers\.(\d+)\.{block}\.{hf}\.bias$', _LAYER + f'{ours}/bias', _ID)
      for block, hf, ours in _LLAMA_PROJECTIONS),
    (r'^layers\.(\d+)\.input_layernorm\.weight$', _LAYER + 'attention_layer_norm/scale', _ID),
    (r'^layers\.(\d+)\.post_attention_layernorm\.weight$', _LAYER + 'ffn_layer_norm/scale', _ID),
    (r'^norm\.weight$', 'decoder/final_layer_norm/scale', _ID),
    (r'^lm_head\.weight$', 'lm_head/kernel', _T),
)
# Buffers we never load (causal-mask and rotary buffers of older checkpoints).
IGNORED_HF_KEYS = (r'^(transformer\.)?h\.\d+\.attn\.(masked_)?bias$', r'rotary_emb\.inv_freq$')
_TIED_HEAD = r'^lm_head\.weight$'
_HINT = ('Check that config.json belongs to these weights (model_type, layer count, '
         'num_key_value_heads, tie_word_embeddings).')
_GPT2_QKV = re.compile(r'^((?:transformer\.)?h\.\d+\.attn\.c_attn\.(?:weight|bias))$')


def hf_name_table(model_type: str) -> Callable[[str], tuple[str, Callable] | None]:
  """The family's name map: a HF tensor name (GPT-2's fused projection split, `split_fused_qkv`)
  -> `(our '/'-path, transform)`, or None."""
  rows = GPT2_TO_OURS if model_type == 'gpt2' else LLAMA_TO_OURS
  prefix = re.compile(r'^transformer\.' if model_type == 'gpt2' else r'^model\.')
  compiled = tuple((re.compile(p), t, f) for p, t, f in rows)

  def name_to_ours(name: str):
    stripped = prefix.sub('', name)
    for regex, template, transform in compiled:
      match = regex.match(stripped)
      if match:
        return match.expand(template), transform
    return None

  return name_to_ours


def split_fused_qkv(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """GPT-2: each `...c_attn.{weight,bias}` (last axis 3 * hidden) -> `...[query|key|value]`.

  A fused tensor whose last axis is not a multiple of 3 is left as it is (then reported as
  unexpected with its shape).
  """
  out = {}
  for name, value in tensors.items():
    if _GPT2_QKV.match(name) and value.shape[-1] % 3 == 0:
      for part, piece in zip(('query', 'key', 'value'), np.split(value, 3, axis=-1),
                             strict=True):
        out[f'{name}[{part}]'] = np.ascontiguousarray(piece)
    else:
      out[name] = value
  return out


def fuse_split_qkv(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The inverse of `split_fused_qkv`: each `...c_attn.{weight,bias}[query|key|value]` triple
  concatenated back on its last axis."""
  out, parts = {}, {}
  for name, value in tensors.items():
    split = re.fullmatch(r'(.+)\[(query|key|value)\]', name)
    if split and _GPT2_QKV.match(split.group(1)):
      parts.setdefault(split.group(1), {})[split.group(2)] = value
    else:
      out[name] = value
  for name, pieces in parts.items():
    out[name] = np.concatenate([pieces['query'], pieces['key'], pieces['value']], axis=-1)
  return out


def merge_decoder_tensors(model: decoder.DecoderLM, tensors: Mapping[str, np.ndarray]
                          ) -> tuple[dict[str, Any], LoadReport]:
  """Params for `model` from HF tensors (stacked when `config.scan_layers`), plus a report.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and mis-shaped name.
  """
  cfg = model.config
  if cfg.model_type == 'gpt2':
    tensors = split_fused_qkv(tensors)
  ignored = IGNORED_HF_KEYS + ((_TIED_HEAD,) if cfg.tie_word_embeddings else ())
  return merge_into_model(model, (jnp.zeros((1, 2), jnp.int32),), tensors,
                          {'decoder': cfg.num_layers}, name_to_ours=hf_name_table(cfg.model_type),
                          ignored_keys=ignored, optional_prefixes=(), hint=_HINT)


def decoder_identity(name: str, params: Mapping[str, Any],
                     weights_sha256: str | None = None) -> BaseModelIdentity:
  """`name` + sha256 of sorted (path, shape, dtype) of all the base params (plain layout)."""
  return base_model_identity(name, params, weights_sha256, base_keys=None)


def load_decoder(directory: str | pathlib.Path, *, name: str | None = None,
                 head: str = 'causal_lm', dtype: str = 'float32', remat: bool = False,
                 scan_layers: bool = False, config_overrides: Mapping[str, Any] | None = None,
                 load_tokenizer: bool = True) -> Pretrained:
  """Loads a decoder checkpoint directory (config.json + safetensors) as a `DecoderLM`.

  Args:
    directory: holds config.json and model.safetensors or model.safetensors.index.json.
    name: recorded in the identity (default: the directory).
    head: 'causal_lm' (the LM head, tied or not, as the checkpoint says).
    dtype, remat, scan_layers: see `DecoderConfig`.
    config_overrides: other DecoderConfig fields, e.g. {'hidden_dropout': 0.0}.
    load_tokenizer: `AutoTokenizer` from the directory (never remote code), padding on the
      left (what `generation.generate` needs) and the EOS token as pad when it has none.

  Returns:
    Pretrained(model, params, tokenizer, config, identity, directory, report).
  """
  if head not in HEADS:
    raise ValueError(f'head={head!r} is not supported for decoders; valid heads: {list(HEADS)}.')
  directory = pathlib.Path(directory)
  config = DecoderConfig.from_hf_config(
      read_hf_config(directory), dtype=dtype, remat=remat, scan_layers=scan_layers,
      **(config_overrides or {}))
  model = decoder.DecoderLM(config)
  params, report = merge_decoder_tensors(model, read_safetensors(directory))
  tokenizer = None
  if load_tokenizer:
    tokenizer = hf_files.load_tokenizer(directory, padding_side='left')
    if tokenizer.pad_token is None:
      tokenizer.pad_token = tokenizer.eos_token
  identity = decoder_identity(name or str(directory), params, weights_sha256(directory))
  return Pretrained(model=model, params=params, tokenizer=tokenizer, config=config,
                    identity=identity, directory=directory, report=report)

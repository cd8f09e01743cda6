"""Hugging Face T5 checkpoints (v1.0 `t5-small`, `google-t5/t5-base`; v1.1 `google/t5-v1_1-base`)
-> our param tree, by an explicit name-mapping table.

Reads safetensors through `hf_files.read_safetensors` (never a pickle) and merges through
`hf_convert.convert_hf_tensors`, so a mismatch reports the full diff (missing, unexpected, shape
mismatch) in one error.

Example:
  pre = load_t5_pretrained('/path/to/t5-small', load_tokenizer=False)
  logits = pre.model.apply({'params': pre.params}, ids, mask, decoder_ids)  # [b, tgt, vocab]
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from adapters_jax.models import hf_files, t5
from adapters_jax.models.hf_convert import LoadReport, merge_into_model
from adapters_jax.models.hf_files import BaseModelIdentity, Pretrained
from adapters_jax.models.registry import resolve_checkpoint_dir
from adapters_jax.models.t5_config import T5Config

_T = lambda w: np.ascontiguousarray(w.T)  # torch Linear weight [out, in] -> kernel [in, out]
_ID = lambda w: w
_BLOCK = r'^(encoder|decoder)\.block\.(\d+)\.layer\.'
_PROJ = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'output'}
_FFN = {'wi': 'intermediate', 'wi_0': 'intermediate', 'wi_1': 'intermediate_linear', 'wo': 'output'}

# (regex over the HF name, our `/`-path template, transform). First match wins. `\g<proj>` and
# `\g<ffn>` are rewritten through `_PROJ` / `_FFN` by `t5_name_to_ours`.
T5_TO_OURS: tuple[tuple[str, str, Callable[[np.ndarray], np.ndarray]], ...] = (
    (r'^shared\.weight$', 'shared/embedding', _ID),
    (r'^(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$',
     r'\1/relative_attention_bias/embedding', _ID),
    (_BLOCK + r'0\.SelfAttention\.(?P<proj>[qkvo])\.weight$', r'\1/layer_\2/attention/\g<proj>/kernel',
     _T),
    (_BLOCK + r'0\.layer_norm\.weight$', r'\1/layer_\2/attention_layer_norm/scale', _ID),
    (r'^(decoder)\.block\.(\d+)\.layer\.1\.EncDecAttention\.(?P<proj>[qkvo])\.weight$',
     r'\1/layer_\2/cross_attention/\g<proj>/kernel', _T),
    (r'^(decoder)\.block\.(\d+)\.layer\.1\.layer_norm\.weight$',
     r'\1/layer_\2/cross_attention_layer_norm/scale', _ID),
    (r'^(encoder)\.block\.(\d+)\.layer\.1\.DenseReluDense\.(?P<ffn>wi|wi_0|wi_1|wo)\.weight$',
     r'\1/layer_\2/ffn/\g<ffn>/kernel', _T),
    (r'^(encoder)\.block\.(\d+)\.layer\.1\.layer_norm\.weight$', r'\1/layer_\2/ffn_layer_norm/scale',
     _ID),
    (r'^(decoder)\.block\.(\d+)\.layer\.2\.DenseReluDense\.(?P<ffn>wi|wi_0|wi_1|wo)\.weight$',
     r'\1/layer_\2/ffn/\g<ffn>/kernel', _T),
    (r'^(decoder)\.block\.(\d+)\.layer\.2\.layer_norm\.weight$', r'\1/layer_\2/ffn_layer_norm/scale',
     _ID),
    (r'^(encoder|decoder)\.final_layer_norm\.weight$', r'\1/final_layer_norm/scale', _ID),
    (r'^lm_head\.weight$', 'lm_head/kernel', _T),
)
_COMPILED = tuple((re.compile(p), t, f) for p, t, f in T5_TO_OURS)
# The stacks' copies of the shared embedding (HF ties them to `shared.weight`).
IGNORED_T5_KEYS = (r'^(encoder|decoder)\.embed_tokens\.weight$',)
# With tied embeddings the LM head is `shared.weight`; a file may still carry a copy.
IGNORED_TIED_KEYS = (r'^lm_head\.weight$',)
_HINT = ('Check that config.json belongs to these weights (feed_forward_proj: `wi` for relu, '
         '`wi_0`/`wi_1` for gated-gelu; tie_word_embeddings=false needs lm_head.weight).')


def t5_name_to_ours(name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
  """Maps one HF T5 tensor name to `(our '/'-path, transform)`, or None if no rule matches."""
  for regex, template, transform in _COMPILED:
    match = regex.match(name)
    if match:
      groups = match.groupdict()
      template = template.replace(r'\g<proj>', _PROJ.get(groups.get('proj') or '', ''))
      template = template.replace(r'\g<ffn>', _FFN.get(groups.get('ffn') or '', ''))
      return match.expand(template), transform
  return None


def merge_t5_tensors(model: t5.T5ForConditionalGeneration, tensors: Mapping[str, np.ndarray]
                     ) -> tuple[dict[str, Any], LoadReport]:
  """Params for `model` from HF T5 tensors (stacked when `config.scan_layers`), plus a report.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and mis-shaped name.
  """
  config = model.config
  ids = jnp.zeros((1, 2), jnp.int32)
  ignored = IGNORED_T5_KEYS + (IGNORED_TIED_KEYS if config.tie_word_embeddings else ())
  return merge_into_model(
      model, (ids, jnp.ones_like(ids), ids), tensors,
      {'encoder': config.num_layers, 'decoder': config.num_decoder_layers},
      name_to_ours=t5_name_to_ours, ignored_keys=ignored, optional_prefixes=(), hint=_HINT)


def t5_identity(name: str, params: Mapping[str, Any], config: T5Config,
                weights_sha256: str | None = None) -> BaseModelIdentity:
  """`hf_files.base_model_identity` over the whole T5 (embedding, both stacks, untied LM head),
  in the plain (unscanned) layout, so scan/remat do not change it."""
  return hf_files.base_model_identity(name, params, weights_sha256,
                                      base_keys=('shared', 'encoder', 'decoder', 'lm_head'))


def load_t5_pretrained(
    name_or_path: str, *, head: str | None = None, dtype: str = 'float32', remat: bool = False,
    scan_layers: bool = False, config_overrides: Mapping[str, Any] | None = None,
    revision: str | None = None, load_tokenizer: bool = True,
) -> Pretrained:
  """Loads a T5 checkpoint (directory or hub id) as `T5ForConditionalGeneration`.

  Args:
    name_or_path: a directory with config.json + model.safetensors, or a hub id 'owner/name'.
    head: must be None: a T5 checkpoint is the whole encoder-decoder with its LM head.
    dtype, remat, scan_layers: see `T5Config`.
    config_overrides: other T5Config fields, e.g. {'dropout_rate': 0.0}.
    revision: hub revision for hub ids.
    load_tokenizer: load `AutoTokenizer` from the directory (never trust_remote_code).

  Returns:
    Pretrained(model, params, tokenizer, config, identity, directory, report).
  """
  if head is not None:
    raise ValueError(f'head={head!r}: a T5 checkpoint loads as T5ForConditionalGeneration '
                     '(encoder, decoder and LM head); pass head=None.')
  directory = resolve_checkpoint_dir(name_or_path, revision=revision)
  config = T5Config.from_hf_config(hf_files.read_hf_config(directory), dtype=dtype, remat=remat,
                                   scan_layers=scan_layers, **(config_overrides or {}))
  model = t5.T5ForConditionalGeneration(config)
  params, report = merge_t5_tensors(model, hf_files.read_safetensors(directory))
  tokenizer = hf_files.load_tokenizer(directory) if load_tokenizer else None
  identity = t5_identity(name_or_path, params, config, hf_files.weights_sha256(directory))
  return Pretrained(model=model, params=params, tokenizer=tokenizer, config=config,
                              identity=identity, directory=pathlib.Path(directory), report=report)

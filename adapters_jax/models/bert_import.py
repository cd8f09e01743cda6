"""Hugging Face BERT/RoBERTa checkpoints -> our param tree, by an explicit name-mapping table.

Reads `config.json` + `model.safetensors` (or sharded `model.safetensors.index.json`) without
torch through `hf_files`; `pytorch_model.bin` is refused (no pickle, ever). Merging
(`hf_convert`) reports the full diff (missing, unexpected, shape mismatch) in one error.
Pooler/classifier absent from the file are initialised fresh and logged.

Example:
  pre = load_bert_pretrained('minilm-l6', head='classification', num_labels=2)
  logits = pre.model.apply({'params': pre.params}, ids, mask)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from adapters_jax.models import bert, hf_files
from adapters_jax.models.encoder_config import EncoderConfig
from adapters_jax.models.hf_convert import LoadReport, merge_into_model
from adapters_jax.models.hf_files import (
  Pretrained,
  base_model_identity,
  read_hf_config,
  read_safetensors,
  weights_sha256,
)
from adapters_jax.models.registry import resolve_checkpoint_dir

_T = lambda w: np.ascontiguousarray(w.T)  # torch Linear weight [out, in] -> kernel [in, out]
_ID = lambda w: w
_L = r'encoder\.layer\.(\d+)\.'
_LN_SCALE, _LN_BIAS = r'LayerNorm\.(?:weight|gamma)$', r'LayerNorm\.(?:bias|beta)$'

# (regex over the HF name without its `bert.`/`roberta.` prefix, our `/`-path template, transform).
# First match wins.
HF_TO_OURS: tuple[tuple[str, str, Callable[[np.ndarray], np.ndarray]], ...] = (
    (r'^embeddings\.(word|position|token_type)_embeddings\.weight$',
     r'embeddings/\1_embeddings/embedding', _ID),
    (r'^embeddings\.' + _LN_SCALE, 'embeddings/layer_norm/scale', _ID),
    (r'^embeddings\.' + _LN_BIAS, 'embeddings/layer_norm/bias', _ID),
    (r'^' + _L + r'attention\.self\.(query|key|value)\.weight$',
     r'encoder/layer_\1/attention/\2/kernel', _T),
    (r'^' + _L + r'attention\.self\.(query|key|value)\.bias$',
     r'encoder/layer_\1/attention/\2/bias', _ID),
    (r'^' + _L + r'attention\.output\.dense\.weight$', r'encoder/layer_\1/attention/output/kernel',
     _T),
    (r'^' + _L + r'attention\.output\.dense\.bias$', r'encoder/layer_\1/attention/output/bias', _ID),
    (r'^' + _L + r'attention\.output\.' + _LN_SCALE, r'encoder/layer_\1/attention_layer_norm/scale',
     _ID),
    (r'^' + _L + r'attention\.output\.' + _LN_BIAS, r'encoder/layer_\1/attention_layer_norm/bias',
     _ID),
    (r'^' + _L + r'intermediate\.dense\.weight$', r'encoder/layer_\1/ffn/intermediate/kernel', _T),
    (r'^' + _L + r'intermediate\.dense\.bias$', r'encoder/layer_\1/ffn/intermediate/bias', _ID),
    (r'^' + _L + r'output\.dense\.weight$', r'encoder/layer_\1/ffn/output/kernel', _T),
    (r'^' + _L + r'output\.dense\.bias$', r'encoder/layer_\1/ffn/output/bias', _ID),
    (r'^' + _L + r'output\.' + _LN_SCALE, r'encoder/layer_\1/ffn_layer_norm/scale', _ID),
    (r'^' + _L + r'output\.' + _LN_BIAS, r'encoder/layer_\1/ffn_layer_norm/bias', _ID),
    (r'^pooler\.dense\.weight$', 'pooler/dense/kernel', _T),
    (r'^pooler\.dense\.bias$', 'pooler/dense/bias', _ID),
    # BERT head: `classifier.{weight,bias}`; RoBERTa head: `classifier.{dense,out_proj}.*`.
    (r'^classifier\.weight$', 'classifier/dense/kernel', _T),
    (r'^classifier\.bias$', 'classifier/dense/bias', _ID),
    (r'^classifier\.(dense|out_proj)\.weight$', r'classifier/\1/kernel', _T),
    (r'^classifier\.(dense|out_proj)\.bias$', r'classifier/\1/bias', _ID),
)
_COMPILED = tuple((re.compile(p), t, f) for p, t, f in HF_TO_OURS)
_PREFIX_RE = re.compile(r'^(?:bert|roberta)\.')
# Buffers and pre-training heads we never use: dropped, listed in the log.
IGNORED_HF_KEYS = (r'(^|\.)embeddings\.position_ids$', r'^cls\.', r'^lm_head\.')
# Parts of our tree a checkpoint may lack (fresh init) or carry while the model lacks them (skip).
OPTIONAL_PREFIXES = ('pooler/', 'classifier/')
_HEAD_HINT = ('Check that config.json belongs to these weights; for a task head with a '
              'different label count pass num_labels=<file labels> or head=None.')


def hf_name_to_ours(name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
  """Maps one HF tensor name to `(our '/'-path, transform)`, or None if no rule matches."""
  stripped = _PREFIX_RE.sub('', name)
  for regex, template, transform in _COMPILED:
    match = regex.match(stripped)
    if match:
      return match.expand(template), transform
  return None


def build_model(config: EncoderConfig, head: str | None = None,
                num_labels: int = 2) -> bert.BertEncoderModel:
  """head=None: `BertEncoderModel`; head='classification': BERT or RoBERTa head by model_type."""
  if head is None:
    return bert.BertEncoderModel(config)
  if head != 'classification':
    raise ValueError(f"head={head!r} is not supported; valid heads: [None, 'classification'].")
  return bert.classification_model(config, num_labels)


def merge_hf_tensors(model: bert.BertEncoderModel, tensors: Mapping[str, np.ndarray], *,
                     seed: int = 0) -> tuple[dict[str, Any], LoadReport]:
  """Params for `model` from HF tensors (stacked when `config.scan_layers`), plus a report;
  the pooler and classifier, when absent from the file, are initialised from `seed`."""
  return merge_into_model(model, (jnp.zeros((1, 2), jnp.int32),), tensors,
                          {'encoder': model.config.num_layers}, seed=seed,
                          name_to_ours=hf_name_to_ours, ignored_keys=IGNORED_HF_KEYS,
                          optional_prefixes=OPTIONAL_PREFIXES, hint=_HEAD_HINT)


def load_bert_pretrained(
    name_or_path: str, *, head: str | None = None, num_labels: int | None = None,
    dtype: str = 'float32', remat: bool = False, scan_layers: bool = False, seed: int = 0,
    config_overrides: Mapping[str, Any] | None = None, revision: str | None = None,
    load_tokenizer: bool = True,
) -> Pretrained:
  """Loads a BERT/RoBERTa checkpoint: short name (`minilm-l6`), directory, or hub id.

  Args:
    name_or_path: a `registry.SHORT_NAMES` key, a directory with config.json +
      model.safetensors, or a hub id 'owner/name' (downloaded, safetensors only).
    head: None (encoder only) or 'classification' (BERT or RoBERTa head by model_type).
    num_labels: head size; default from config.json `id2label`, else 2. 1 = regression.
    dtype, remat, scan_layers: see `EncoderConfig`.
    seed: initialises parts absent from the file (pooler, classifier).
    config_overrides: other EncoderConfig fields, e.g. {'attention_dropout': 0.0}.
    revision: hub revision (branch, tag or commit) for hub ids.
    load_tokenizer: load `AutoTokenizer` from the directory (never trust_remote_code).

  Returns:
    Pretrained(model, params, tokenizer, config, identity, directory, report).
  """
  directory = resolve_checkpoint_dir(name_or_path, revision=revision)
  hf_config = read_hf_config(directory)
  config = EncoderConfig.from_hf_config(
      hf_config, dtype=dtype, remat=remat, scan_layers=scan_layers, **(config_overrides or {}))
  if num_labels is None:
    num_labels = len(hf_config.get('id2label') or {}) or 2
  model = build_model(config, head, num_labels)
  params, report = merge_hf_tensors(model, read_safetensors(directory), seed=seed)
  tokenizer = hf_files.load_tokenizer(directory) if load_tokenizer else None
  identity = base_model_identity(name_or_path, params, weights_sha256(directory))
  return Pretrained(model=model, params=params, tokenizer=tokenizer, config=config,
                    identity=identity, directory=directory, report=report)

"""Hugging Face BERT/RoBERTa checkpoints -> our param tree, by an explicit name-mapping table.

Reads `config.json` + `model.safetensors` (or sharded `model.safetensors.index.json`) without
torch; `pytorch_model.bin` is refused (no pickle, ever). Merging reports the full diff (missing,
unexpected, shape mismatch) in one error. Pooler/classifier absent from the file are initialised
fresh and logged.

Example:
  pre = load_pretrained('minilm-l6', head='classification', num_labels=2)
  logits = pre.model.apply({'params': pre.params}, ids, mask)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from adapters_jax.models import bert, scan_layout
from adapters_jax.models.encoder_config import EncoderConfig
from adapters_jax.models.registry import resolve_checkpoint_dir
from adapters_jax.models.t5_config import T5Config

log = logging.getLogger(__name__)

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


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model; the message lists every difference."""


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What happened to each name while merging a checkpoint into the model's tree."""

  loaded: tuple[str, ...]   # our paths filled from the file
  fresh: tuple[str, ...]    # our optional paths absent from the file, initialised fresh
  skipped: tuple[str, ...]  # file names mapped to optional parts this model does not have
  ignored: tuple[str, ...]  # file names matching IGNORED_HF_KEYS


@dataclasses.dataclass(frozen=True)
class BaseModelIdentity:
  """Which base model an adapter belongs to; recorded by adapter checkpoints.

  `fingerprint` is sha256 over sorted (path, shape, dtype) of `embeddings/` + `encoder/` in the
  plain (unscanned) layout, so heads, pooler, scan/remat do not change it. Two checkpoints of
  the same architecture share it; `weights_sha256` (over the weight files) tells them apart.
  """

  name: str
  fingerprint: str
  weights_sha256: str | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
  """A loaded checkpoint: model, float32 params, tokenizer (or None), config, provenance."""

  model: nn.Module
  params: dict[str, Any]
  tokenizer: Any
  config: EncoderConfig | T5Config
  identity: BaseModelIdentity
  directory: pathlib.Path
  report: LoadReport


def hf_name_to_ours(name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
  """Maps one HF tensor name to `(our '/'-path, transform)`, or None if no rule matches."""
  stripped = _PREFIX_RE.sub('', name)
  for regex, template, transform in _COMPILED:
    match = regex.match(stripped)
    if match:
      return match.expand(template), transform
  return None


def read_safetensors(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of `model.safetensors` or of the shards in `model.safetensors.index.json`."""
  directory = pathlib.Path(directory)
  index = directory / 'model.safetensors.index.json'
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())['weight_map'].values()))
    files = [directory / s for s in shards]
  elif (directory / 'model.safetensors').is_file():
    files = [directory / 'model.safetensors']
  else:
    pickles = sorted(p.name for p in directory.glob('*.bin')) + sorted(
        p.name for p in directory.glob('*.pt*'))
    hint = (f' It has {pickles}: pickled PyTorch weights are never loaded (arbitrary code '
            'execution). Convert them once where torch is installed, e.g. '
            '`transformers.AutoModel.from_pretrained(dir).save_pretrained(dir, '
            'safe_serialization=True)`, or use a hub revision that has safetensors.'
            if pickles else '')
    raise FileNotFoundError(
        f'{directory} has no model.safetensors or model.safetensors.index.json.{hint}')
  tensors: dict[str, np.ndarray] = {}
  for path in files:
    tensors.update(_read_file(path))
  return tensors


def _read_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open  # lazily: only needed when loading

  out = {}
  with safe_open(str(path), framework='np') as f:
    for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
      try:
        out[key] = f.get_tensor(key)
      except (TypeError, ValueError):  # bfloat16 has no numpy dtype in safetensors' numpy
        with safe_open(str(path), framework='flax') as g:
          out[key] = np.asarray(g.get_tensor(key).astype(jnp.float32))
  return out


def convert_hf_tensors(
    tensors: Mapping[str, np.ndarray], reference: Mapping[str, jax.ShapeDtypeStruct], *,
    name_to_ours: Callable[[str], tuple[str, Callable] | None] = hf_name_to_ours,
    ignored_keys: Sequence[str] = IGNORED_HF_KEYS,
    optional_prefixes: tuple[str, ...] = OPTIONAL_PREFIXES, hint: str = _HEAD_HINT,
) -> tuple[dict[str, np.ndarray], LoadReport]:
  """Maps HF tensors onto `reference` (our flat '/'-paths -> shapes, plain layout).

  Returns the float32 arrays for every reference path found in the file and a report; raises
  CheckpointMismatchError listing every missing, unexpected and mis-shaped name at once. The
  keyword arguments default to the BERT/RoBERTa table; another family passes its own name
  mapping, ignored names, optional parts and the closing hint of the error.
  """
  ignore = [re.compile(p) for p in ignored_keys]
  is_optional = lambda path: path.startswith(optional_prefixes)
  out, skipped, ignored, unexpected, mismatched = {}, [], [], [], []
  for name in sorted(tensors):
    if any(r.search(name) for r in ignore):
      ignored.append(name)
      continue
    mapped = name_to_ours(name)
    if mapped is None or (mapped[0] not in reference and not is_optional(mapped[0])):
      unexpected.append(name if mapped is None else f'{name} (-> {mapped[0]})')
      continue
    path, transform = mapped
    if path not in reference:
      skipped.append(name)
      continue
    value = transform(np.asarray(tensors[name], dtype=np.float32))
    if value.shape != tuple(reference[path].shape):
      mismatched.append(f'{name} -> {path}: file {tuple(tensors[name].shape)} (ours '
                        f'{value.shape}), model {tuple(reference[path].shape)}')
      continue
    out[path] = value
  found = set(out) | {m.split(' -> ')[1].split(': ')[0] for m in mismatched}
  absent = sorted(p for p in reference if p not in found)
  missing = [p for p in absent if not is_optional(p)]
  fresh = tuple(p for p in absent if is_optional(p))
  if missing or unexpected or mismatched:
    lines = ['Checkpoint does not match the model:']
    for title, items in (('missing (in the model, not in the file)', missing),
                         ('unexpected (in the file, no place in the model)', unexpected),
                         ('shape mismatch', mismatched)):
      if items:
        lines.append(f'  {title}: {len(items)}')
        lines.extend(f'    {item}' for item in items)
    lines.append(hint)
    raise CheckpointMismatchError('\n'.join(lines))
  return out, LoadReport(tuple(sorted(out)), fresh, tuple(skipped), tuple(ignored))


def build_model(config: EncoderConfig, head: str | None = None,
                num_labels: int = 2) -> bert.BertEncoderModel:
  """head=None: `BertEncoderModel`; head='classification': BERT or RoBERTa head by model_type."""
  if head is None:
    return bert.BertEncoderModel(config)
  if head != 'classification':
    raise ValueError(f"head={head!r} is not supported; valid heads: [None, 'classification'].")
  return bert.classification_model(config, num_labels)


def _dummy_inputs():
  return jnp.zeros((1, 2), jnp.int32)


def merge_hf_tensors(model: bert.BertEncoderModel, tensors: Mapping[str, np.ndarray], *,
                     seed: int = 0) -> tuple[dict[str, Any], LoadReport]:
  """Params for `model` from HF tensors (stacked when `config.scan_layers`), plus a report."""
  plain = model.clone(config=model.config.replace(scan_layers=False, remat=False))
  init = lambda key: plain.init(key, _dummy_inputs())['params']
  key = jax.random.key(seed)
  reference = traverse_util.flatten_dict(jax.eval_shape(init, key), sep='/')
  flat, report = convert_hf_tensors(tensors, reference)
  if report.fresh:
    log.info('Initialising fresh (absent from the checkpoint): %s', list(report.fresh))
    fresh = traverse_util.flatten_dict(jax.jit(init)(key), sep='/')
    flat.update({p: fresh[p] for p in report.fresh})
  if report.skipped:
    log.info('Not used by this model (skipped): %s', list(report.skipped))
  if report.ignored:
    log.info('Ignored buffers/pre-training heads: %s', list(report.ignored))
  params = traverse_util.unflatten_dict(
      {p: jnp.asarray(v, jnp.float32) for p, v in flat.items()}, sep='/')
  if model.config.scan_layers:
    params = scan_layout.stack_layers(params, {'encoder': model.config.num_layers})
  return params, report


def base_model_identity(name: str, params: Mapping[str, Any],
                        weights_sha256: str | None = None,
                        base_keys: tuple[str, ...] = ('embeddings', 'encoder')) -> BaseModelIdentity:
  """`name` + sha256 of sorted (path, shape, dtype) of the base model's params.

  `base_keys` are the top-level entries that make the base model (BERT: `embeddings`, `encoder`;
  another family passes its own, in the plain layout).
  """
  params = dict(params)
  if scan_layout.is_scanned(params):
    params = jax.eval_shape(scan_layout.unstack_layers, params)
  base = {k: params[k] for k in base_keys if k in params}
  flat = traverse_util.flatten_dict(base, sep='/')
  rows = sorted((p, tuple(int(d) for d in v.shape), str(jnp.dtype(v.dtype)))
                for p, v in flat.items())
  digest = hashlib.sha256(repr(rows).encode()).hexdigest()
  return BaseModelIdentity(name=name, fingerprint=digest, weights_sha256=weights_sha256)


def weights_sha256(directory: pathlib.Path) -> str:
  """sha256 over the bytes of every `*.safetensors` file in `directory`, in name order."""
  digest = hashlib.sha256()
  for path in sorted(directory.glob('*.safetensors')):
    with path.open('rb') as f:
      while chunk := f.read(1 << 24):
        digest.update(chunk)
  return digest.hexdigest()


def load_pretrained(
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
  config_path = directory / 'config.json'
  if not config_path.is_file():
    raise FileNotFoundError(f'{config_path} not found: a HF checkpoint directory needs it.')
  hf_config = json.loads(config_path.read_text())
  config = EncoderConfig.from_hf_config(
      hf_config, dtype=dtype, remat=remat, scan_layers=scan_layers, **(config_overrides or {}))
  if num_labels is None:
    num_labels = len(hf_config.get('id2label') or {}) or 2
  model = build_model(config, head, num_labels)
  params, report = merge_hf_tensors(model, read_safetensors(directory), seed=seed)
  tokenizer = None
  if load_tokenizer:
    import transformers  # lazily: heavy import

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(directory), trust_remote_code=False)
  identity = base_model_identity(name_or_path, params, weights_sha256(directory))
  return Pretrained(model=model, params=params, tokenizer=tokenizer, config=config,
                    identity=identity, directory=directory, report=report)

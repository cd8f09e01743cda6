"""Names shared by the AdapterHub and PEFT formats: our sites and leaves <-> Hugging Face module names.

Our BERT/RoBERTa sites (`encoder/layer_<i>/attention/{query,key,value,output}`,
`encoder/layer_<i>/ffn/{intermediate,output}`) are PyTorch `nn.Linear` modules in transformers'
BERT/RoBERTa (`encoder.layer.<i>.attention.self.query`, ..., `encoder.layer.<i>.output.dense`).
Our kernels are `[in, out]`; a torch Linear weight is `[out, in]`.

Also here: the task head and layer-norm leaves (trained with some methods) under their Hugging
Face tensor names, and reading the safetensors files both formats use (`models.hf_files`).
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable, Mapping

import numpy as np

from adapters_jax.models import hf_name_to_ours
from adapters_jax.models.hf_files import read_safetensors_file

# Our site path inside a block -> the transformers module inside `encoder.layer.<i>`.
SITE_TO_HF = {
    'attention/query': 'attention.self.query',
    'attention/key': 'attention.self.key',
    'attention/value': 'attention.self.value',
    'attention/output': 'attention.output.dense',
    'ffn/intermediate': 'intermediate.dense',
    'ffn/output': 'output.dense',
}
HF_TO_SITE = {hf: ours for ours, hf in SITE_TO_HF.items()}
_OUR_SITE = re.compile(r'^encoder/layer_(\d+)/(.+)$')
_HF_MODULE = re.compile(r'^(?:(?:bert|roberta)\.)?encoder\.layer\.(\d+)\.(.+)$')

# Trained base leaves (layer norms, task head) -> the transformers tensor name without prefix.
_LAYER_NORMS = (
    (r'^embeddings/layer_norm/(scale|bias)$', r'embeddings.LayerNorm.{}'),
    (r'^encoder/layer_(\d+)/attention_layer_norm/(scale|bias)$',
     r'encoder.layer.{}.attention.output.LayerNorm.{}'),
    (r'^encoder/layer_(\d+)/ffn_layer_norm/(scale|bias)$', r'encoder.layer.{}.output.LayerNorm.{}'),
)
MODEL_PREFIXES = {'bert': 'bert.', 'roberta': 'roberta.'}


class InteropError(ValueError):
  """An adapter cannot be converted between formats exactly; the message names what to change."""


def split_site(path: str) -> tuple[int, str]:
  """`encoder/layer_3/ffn/output` -> `(3, 'ffn/output')`; refuses paths outside our layers."""
  match = _OUR_SITE.match(path)
  if not match:
    raise InteropError(f'Site {path!r} is not inside a layer of our BERT/RoBERTa backbone '
                       '(`encoder/layer_<i>/...`); scanned layers (`encoder/layers`) and other hosts '
                       'cannot be exported.')
  return int(match.group(1)), match.group(2)


def site_to_hf(path: str) -> str:
  """Our site path -> the transformers module name without model prefix (`encoder.layer.3.output.dense`)."""
  layer, inner = split_site(path)
  if inner not in SITE_TO_HF:
    raise InteropError(f'Site {path!r} has no single Linear module in transformers\' BERT/RoBERTa; '
                       f'sites that map: {sorted(SITE_TO_HF)} inside `encoder/layer_<i>/`.')
  return f'encoder.layer.{layer}.{SITE_TO_HF[inner]}'


def hf_to_site(module: str) -> str | None:
  """A transformers module name (with or without `bert.`/`roberta.`) -> our site path, or None."""
  match = _HF_MODULE.match(module)
  if not match or match.group(2) not in HF_TO_SITE:
    return None
  return f'encoder/layer_{match.group(1)}/{HF_TO_SITE[match.group(2)]}'


def torch_linear(kernel: np.ndarray) -> np.ndarray:
  """Our kernel `[in, out]` -> a torch Linear weight `[out, in]` (contiguous float32)."""
  return np.ascontiguousarray(np.asarray(kernel, np.float32).T)


def base_leaf_to_hf(path: str, model_type: str) -> str:
  """A trained base leaf (layer norm or task head) -> its transformers tensor name.

  Encoder leaves get the model prefix (`bert.`/`roberta.`); the head (`classifier...`) has none.
  """
  for pattern, template in _LAYER_NORMS:
    match = re.match(pattern, path)
    if match:
      *indices, leaf = match.groups()
      return MODEL_PREFIXES[model_type] + template.format(*indices, 'weight' if leaf == 'scale' else leaf)
  head = re.match(r'^classifier/(dense|out_proj)/(kernel|bias)$', path)
  if head:
    module, leaf = head.groups()
    leaf = 'weight' if leaf == 'kernel' else leaf
    return f'classifier.{leaf}' if model_type == 'bert' else f'classifier.{module}.{leaf}'
  raise InteropError(f'Trained leaf {path!r} is neither a layer norm nor the task head: the other '
                     'formats carry only adapters, layer norms and the head.')


def base_leaf_value_to_hf(path: str, value: np.ndarray) -> np.ndarray:
  """A trained base leaf's value in transformers' layout (kernels transposed to `[out, in]`)."""
  return torch_linear(value) if path.endswith('/kernel') else np.asarray(value, np.float32)


def hf_to_base_leaf(name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
  """`(our path, transform)` for a transformers layer-norm or head tensor name, else None."""
  mapped = hf_name_to_ours(name)
  if mapped is None:
    return None
  path, _ = mapped
  if path.startswith('classifier/') or re.search(r'layer_norm/(scale|bias)$', path):
    return mapped
  return None


def is_base_leaf(path: str) -> bool:
  """A trained leaf that belongs to the base model (layer norm, head), not to an adapter."""
  return '/adapters/' not in f'/{path}'


def model_type_from_leaves(leaves: Mapping[str, np.ndarray]) -> str | None:
  """`roberta` when the trained head is RoBERTa's (`out_proj`), `bert` for BERT's, else None."""
  if 'classifier/out_proj/kernel' in leaves:
    return 'roberta'
  if 'classifier/dense/kernel' in leaves:
    return 'bert'
  return None


def read_adapter_weights(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """An exported adapter's safetensors file (`hf_files.read_safetensors_file`) as float32 numpy,
  and its metadata; a missing file is an `InteropError` naming it."""
  if not path.is_file():
    raise InteropError(f'{path} is missing.')
  tensors, metadata = read_safetensors_file(path)
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}, metadata


def read_json(path: pathlib.Path) -> dict:
  """A JSON file; a parse error names the file and line."""
  if not path.is_file():
    raise InteropError(f'{path} is missing.')
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise InteropError(f'{path} line {e.lineno}: not valid JSON ({e.msg}).') from e

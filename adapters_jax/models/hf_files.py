"""Hugging Face checkpoint files, for every backbone family and for adapter interop.

* `read_hf_config`, `read_safetensors` (`model.safetensors` or the shards of
  `model.safetensors.index.json`; pickles are refused, never loaded), `read_safetensors_file`,
  `write_safetensors`, `write_hf_checkpoint`, `load_tokenizer`.
* Provenance: `weights_sha256` (the weight files' bytes) and `base_model_identity` (the params'
  paths, shapes and dtypes), recorded by adapter checkpoints as `BaseModelIdentity`.
* `Pretrained`: what every loader returns.

    config = read_hf_config(directory)
    tensors = read_safetensors(directory)            # {HF name: array}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from adapters_jax.models import scan_layout
from adapters_jax.models.backbone_config import BackboneConfig
from adapters_jax.models.hf_convert import LoadReport

# A tokenizer's files, copied beside weights written as a HF checkpoint directory.
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'vocab.txt', 'vocab.json', 'merges.txt', 'tokenizer.model', 'spiece.model')


@dataclasses.dataclass(frozen=True)
class BaseModelIdentity:
  """Which base model an adapter belongs to; recorded by adapter checkpoints.

  `fingerprint` is sha256 over sorted (path, shape, dtype) of the base model's params (BERT:
  `embeddings/` + `encoder/`) in the plain (unscanned) layout, so heads, pooler, scan/remat do not
  change it. Two checkpoints of the same architecture share it; `weights_sha256` (over the weight
  files) tells them apart.
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
  config: BackboneConfig
  identity: BaseModelIdentity
  directory: pathlib.Path
  report: LoadReport


def read_hf_config(directory: pathlib.Path) -> dict[str, Any]:
  """`directory/config.json`; its absence is an error naming the file."""
  config_path = directory / 'config.json'
  if not config_path.is_file():
    raise FileNotFoundError(f'{config_path} not found: a HF checkpoint directory needs it.')
  return json.loads(config_path.read_text())


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
    tensors.update(read_safetensors_file(path)[0])
  return tensors


def read_safetensors_file(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """All tensors of one safetensors file as numpy (bfloat16 as float32), and its metadata."""
  from safetensors import safe_open  # lazily: only needed when loading

  out = {}
  with safe_open(str(path), framework='np') as f:
    metadata = dict(f.metadata() or {})
    for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
      try:
        out[key] = f.get_tensor(key)
      except (TypeError, ValueError):  # bfloat16 has no numpy dtype in safetensors' numpy
        with safe_open(str(path), framework='flax') as g:
          out[key] = np.asarray(g.get_tensor(key).astype(jnp.float32))
  return out, metadata


def write_safetensors(path: pathlib.Path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes contiguous float32 tensors with string metadata (`format: pt`, as PyTorch writers do)."""
  from safetensors.numpy import save_file  # lazily: only needed when writing

  arrays = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()}
  save_file(arrays, str(path), metadata={'format': 'pt', **(metadata or {})})


def write_hf_checkpoint(directory: str | pathlib.Path, hf_config: Mapping[str, Any],
                        tensors: Mapping[str, np.ndarray],
                        tokenizer_dir: str | pathlib.Path | None = None) -> pathlib.Path:
  """Writes a HF checkpoint directory: `config.json`, `model.safetensors` (float32, HF names)
  and the tokenizer files found in `tokenizer_dir`. Returns the directory."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'config.json').write_text(json.dumps(dict(hf_config), indent=2, sort_keys=True) + '\n')
  write_safetensors(directory / 'model.safetensors', tensors)
  if tokenizer_dir is not None:
    for name in TOKENIZER_FILES:
      source = pathlib.Path(tokenizer_dir) / name
      if source.is_file():
        shutil.copyfile(source, directory / name)
  return directory


def load_tokenizer(directory: pathlib.Path, **options: Any) -> Any:
  """`transformers.AutoTokenizer` from the directory, never with remote code (`options`: e.g.
  `padding_side='left'`)."""
  import transformers  # lazily: heavy import

  return transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False,
                                                    **options)


def weights_sha256(directory: pathlib.Path) -> str:
  """sha256 over the bytes of every `*.safetensors` file in `directory`, in name order."""
  digest = hashlib.sha256()
  for path in sorted(directory.glob('*.safetensors')):
    with path.open('rb') as f:
      while chunk := f.read(1 << 24):
        digest.update(chunk)
  return digest.hexdigest()


def base_model_identity(name: str, params: Mapping[str, Any], weights_sha256: str | None = None,
                        base_keys: Iterable[str] | None = ('embeddings', 'encoder')
                        ) -> BaseModelIdentity:
  """`name` + sha256 of sorted (path, shape, dtype) of the base model's params, adapters aside.

  Args:
    name: recorded as given (short name, directory or hub id).
    params: the model's params, plain or scanned, spliced or not.
    weights_sha256: of the weight files (`weights_sha256`), when loaded from files.
    base_keys: the top-level entries that make the base model (BERT: `embeddings`, `encoder`; T5
      passes its own); None: all of them (the decoders).
  """
  params = dict(params)
  if scan_layout.is_scanned(params):
    params = jax.eval_shape(scan_layout.unstack_layers, params)
  base = params if base_keys is None else {k: params[k] for k in base_keys if k in params}
  flat = traverse_util.flatten_dict(base, sep='/')
  rows = sorted((p, tuple(int(d) for d in v.shape), str(jnp.dtype(v.dtype)))
                for p, v in flat.items() if '/adapters/' not in f'/{p}')
  digest = hashlib.sha256(repr(rows).encode()).hexdigest()
  return BaseModelIdentity(name=name, fingerprint=digest, weights_sha256=weights_sha256)

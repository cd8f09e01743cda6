"""One adapter between formats: read from / written as one of our adapter checkpoints.

`PortableAdapter` is what every converter reads or produces: the method config, the trained leaves
under our paths (adapter leaves plus trained layer norms and task head) and the base model's
identity. `read_checkpoint` makes one from an adapter checkpoint (`save_adapter` format);
`write_checkpoint` splices an imported one into a freshly loaded base model, checks that it fits
and is the base it was made for, and saves it as an adapter checkpoint (usable by
`restore_adapter`, prediction, or to continue training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from adapters_jax import models
from adapters_jax.checkpoint import save
from adapters_jax.interop.naming import InteropError, is_base_leaf
from adapters_jax.methods import MethodConfig, method_from_dict
from adapters_jax.models.decoder_config import MODEL_TYPES as DECODER_MODEL_TYPES
from adapters_jax.models.hf_files import read_hf_config
from adapters_jax.splicing import splice, tree
from adapters_jax.splicing.sites import match_sites

# safetensors metadata key holding our base identity (JSON) in exported files.
BASE_METADATA_KEY = 'adapters_jax.base'


@dataclasses.dataclass(frozen=True)
class PortableAdapter:
  """An adapter with everything a format needs.

  Attributes:
    name: the adapter's name.
    method: its method config (sites, sizes, activation, scaling, rank/alpha, ...).
    leaves: `{our path: float32 array}`: the adapter's leaves, plus trained layer norms and head.
    sites: `{site path: placement}` of every spliced site (empty for an import before splicing).
    base: our base identity, each field when known (may be empty): `name`, `fingerprint` (parameter
      shapes), `weights_sha256` (weight files), and any other field of the record's `base` section.
    label_names: the task's label names, when known.
  """

  name: str
  method: MethodConfig
  leaves: dict[str, np.ndarray]
  sites: dict[str, str]
  base: dict[str, str]
  label_names: tuple[str, ...] | None = None

  def adapter_leaves(self) -> dict[str, np.ndarray]:
    return {p: v for p, v in self.leaves.items() if not is_base_leaf(p)}

  def base_leaves(self) -> dict[str, np.ndarray]:
    return {p: v for p, v in self.leaves.items() if is_base_leaf(p)}


def read_checkpoint(directory: str | os.PathLike) -> PortableAdapter:
  """Reads an adapter checkpoint written by `save_adapter` (e.g. a training run's `best/`)."""
  record = save.load_record(directory)
  if record['adapter'] is None:
    raise InteropError(f'{os.fspath(directory)} holds fully fine-tuned weights, not an adapter; only '
                       'adapter checkpoints can be exported.')
  method = method_from_dict(record['method'])
  rules = match_sites(method.site_rules(), record['sites'])
  leaves = {p: np.asarray(v, np.float32) for p, v in save.load_leaves(directory).items()}
  base = {k: str(v) for k, v in record['base'].items() if v}
  if 'name' in base and 'weights_sha256' not in base:
    digest = local_weights_sha256(base['name'])
    if digest:
      base['weights_sha256'] = digest
  # Training runs record `label_names` in `extra`; other checkpoints may not.
  label_names = record['extra'].get('label_names')
  return PortableAdapter(
      name=record['adapter'], method=method, leaves=leaves,
      sites={path: rule.placement for path, rule in rules.items()}, base=base,
      label_names=tuple(label_names) if label_names else None)


def base_metadata(adapter: PortableAdapter) -> dict[str, str]:
  """safetensors metadata carrying the base identity (read back by `base_from_metadata`)."""
  return {BASE_METADATA_KEY: json.dumps(adapter.base, sort_keys=True)} if adapter.base else {}


def base_from_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
  if BASE_METADATA_KEY not in metadata:
    return {}
  return dict(json.loads(metadata[BASE_METADATA_KEY]))


def local_weights_sha256(name: str) -> str | None:
  """sha256 over the `*.safetensors` files of a local base (short name or directory), as
  `models.Pretrained.identity.weights_sha256` computes it; None for a hub id (nothing is downloaded)."""
  if name not in models.SHORT_NAMES and not pathlib.Path(name).is_dir():
    return None
  digest = hashlib.sha256()
  for path in sorted(models.resolve_checkpoint_dir(name).glob('*.safetensors')):
    with path.open('rb') as f:
      while chunk := f.read(1 << 24):
        digest.update(chunk)
  return digest.hexdigest()


def base_hf_config(adapter: PortableAdapter) -> dict | None:
  """The base's `config.json` when the base is local (short name or directory), else None."""
  name = adapter.base.get('name', '')
  if name and (name in models.SHORT_NAMES or pathlib.Path(name).is_dir()):
    return read_hf_config(models.resolve_checkpoint_dir(name))
  return None


def check_base(adapter: PortableAdapter, pretrained: models.Pretrained, model_name: str) -> None:
  """Refuses a base whose shapes or weights differ from the ones the adapter was exported from.

  Compares the shape fingerprint (`save.base_fingerprint`) and the sha256 of the weight files
  (`weights_sha256`), each when the exported files carry it.
  """
  base, fix = adapter.base, 'import it onto that base, or allow another base (--allow_other_base)'
  if 'fingerprint' in base and base['fingerprint'] != save.base_fingerprint(pretrained.params):
    raise InteropError(f'The adapter was made on base {base.get("name")!r}, whose parameter shapes differ '
                       f'from those of {model_name!r}; {fix}.')
  if 'weights_sha256' in base and base['weights_sha256'] != pretrained.identity.weights_sha256:
    raise InteropError(f'The adapter was made on base {base.get("name")!r}, whose weight files differ from '
                       f'those of {model_name!r} (sha256 {base["weights_sha256"][:12]}... vs '
                       f'{str(pretrained.identity.weights_sha256)[:12]}...); {fix}.')


def num_labels(adapter: PortableAdapter) -> int | None:
  """The head's label count, when the adapter carries a head."""
  for path in ('classifier/out_proj/bias', 'classifier/dense/bias'):
    if path in adapter.leaves:
      return int(adapter.leaves[path].shape[0])
  return None


def sample_call(pretrained: models.Pretrained) -> tuple[jnp.ndarray, ...]:
  """One call's arguments, for shapes only: `(ids,)` `[1, 4]`; T5's `(ids, mask, decoder_ids)`."""
  ids = jnp.zeros((1, 4), jnp.int32)
  if isinstance(pretrained.model, models.T5ForConditionalGeneration):
    return ids, jnp.ones_like(ids), ids
  return (ids,)


def splice_into(adapter: PortableAdapter, pretrained: models.Pretrained):
  """`(spliced, params, mask)`: the adapter grafted into `pretrained` with its leaves written in;
  `mask` marks the leaves it carries, but those its method keeps frozen (`frozen_leaves`).

  Raises:
    CheckpointError: the full diff when a leaf has no place in the model or the wrong shape.
  """
  spliced, params = splice.add_adapter(pretrained.model, pretrained.params, adapter.name,
                                       adapter.method, jax.random.key(0), *sample_call(pretrained))
  flat = traverse_util.flatten_dict(params, sep='/')
  expected = {p: v for p, v in flat.items() if tree.is_adapter_path(p, adapter.name)}
  problems = save.tree_diff(expected, adapter.adapter_leaves())
  if problems:
    raise save.CheckpointError('The imported adapter does not fit the model:\n  '
                                     + '\n  '.join(problems))
  params = save.overwrite_leaves(params, adapter.leaves, what='imported adapter')
  frozen = [re.compile(tree.adapter_pattern(adapter.name, leaf)) for leaf in adapter.method.frozen_leaves]
  trained = {p for p in adapter.leaves if not any(f.fullmatch(p) for f in frozen)}
  mask = traverse_util.unflatten_dict(
      {p: p in trained for p in traverse_util.flatten_dict(params, sep='/')}, sep='/')
  return spliced, params, mask


def write_checkpoint(adapter: PortableAdapter, model_name: str, out: str | os.PathLike, *,
                     source: Mapping[str, str], allow_other_base: bool = False) -> str:
  """Saves an imported adapter as one of our adapter checkpoints on base `model_name`.

  Args:
    adapter: what a format reader produced.
    model_name: the base model (short name, directory or hub id) it is spliced into.
    out: the checkpoint directory to write.
    source: where it came from (`format`, `path`), recorded in the record's `extra`.
    allow_other_base: skip the check against the base identity the files carry.

  Returns:
    The checkpoint directory.
  """
  model_type = read_hf_config(models.resolve_checkpoint_dir(model_name)).get('model_type')
  encoder = model_type not in ('t5', *DECODER_MODEL_TYPES)
  pretrained = models.load_pretrained(model_name, head='classification' if encoder else None,
                                      num_labels=num_labels(adapter) if encoder else None,
                                      load_tokenizer=False)
  if not allow_other_base:
    check_base(adapter, pretrained, model_name)
  spliced, params, mask = splice_into(adapter, pretrained)
  extra: dict[str, Any] = {'imported_from': dict(source)}
  if adapter.label_names:
    extra['label_names'] = list(adapter.label_names)
  return save.save_adapter(out, spliced, params, adapter.name, mask=mask, base_name=model_name,
                                 extra=extra)

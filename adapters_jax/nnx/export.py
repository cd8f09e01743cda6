"""An NNX model's adapter exported to AdapterHub `adapters` or PEFT, through its Linen twin's paths.

The exporters (`adapters_jax.interop`) name modules by our Linen BERT/RoBERTa paths
(`encoder/layer_0/attention/query`, `adapters_jax.interop.naming.site_to_hf`). An NNX model of
that family (same weights, its own module names) exports its adapter with a map from its module
paths to those, the map `adapters_jax.nnx.linen_bridge` takes:

    nnx_to_linen = {r'blocks/(\\d+)/attn/out': r'encoder/layer_\\1/attention/output',
                    r'blocks/(\\d+)/attn': r'encoder/layer_\\1/attention', ...}
    export_adapter(model, 'task', nnx_to_linen, 'peft', 'exports/task', model_type='bert')
    # torch: peft.PeftModel.from_pretrained(BertForSequenceClassification..., 'exports/task')

The adapter's leaves are exported (not the host's: a trained head or norms stay behind); a
Compacter's shared leaf is refused, as by `linen_bridge`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np

from adapters_jax.interop.convert import export_portable
from adapters_jax.interop.portable import PortableAdapter
from adapters_jax.nnx import splice
from adapters_jax.nnx.checkpoint import adapter_arrays
from adapters_jax.nnx.linen_bridge import PathMap, map_paths, translate_method


def portable_adapter(model, name: str, path_map: PathMap,
                     base: Mapping[str, str] | None = None) -> PortableAdapter:
  """Adapter `name` of NNX `model` with its sites and leaves at the Linen twin's paths.

  Args:
    model: the adapted NNX model.
    name: the adapter.
    path_map: `model`'s module paths -> our Linen model's (see `adapters_jax.nnx.linen_bridge`).
    base: the base's identity as the exporters record it (`name`: a hub id or a local directory,
      which PEFT's `base_model_name_or_path` names).
  """
  spec = splice.find_adapter(model, name)
  if spec.merged:
    raise ValueError(f'Adapter {name!r} is merged into the base weights; unmerge it to export it.')
  if spec.method.make_shared_module() is not None:
    raise ValueError(f'Adapter {name!r} ({spec.method.kind}) has leaves its sites share, which '
                     'the NNX export does not carry; export it from the Linen model.')
  sites = [site.path for site in spec.sites]
  mapped_sites = map_paths(sites, path_map, 'the adapter\'s sites')
  leaves = adapter_arrays(model, name)
  mapped = map_paths(leaves, path_map, 'the adapter\'s leaves')
  return PortableAdapter(
      name=name, method=translate_method(spec.method, sites, list(mapped_sites.values()), []),
      leaves={mapped[p]: np.asarray(v, np.float32) for p, v in leaves.items()},
      sites={mapped_sites[site.path]: site.placement for site in spec.sites},
      base=dict(base or {}))


def export_adapter(model, name: str, path_map: PathMap, fmt: str, out: str | os.PathLike,
                   model_type: str, base: Mapping[str, str] | None = None,
                   overwrite: bool = False) -> pathlib.Path:
  """Writes NNX adapter `name` as an AdapterHub (`fmt='adapters'`) or PEFT (`'peft'`) directory
  for transformers' `model_type` (`bert`, `roberta`) model; see `portable_adapter` for the rest."""
  return export_portable(portable_adapter(model, name, path_map, base), fmt, out, model_type,
                         overwrite)

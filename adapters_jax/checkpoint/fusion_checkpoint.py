"""Fusion checkpoints: a fusion layer saved on its own, restored over the adapters it fuses.

    save_fusion(workdir / 'best', spliced, params, 'rt,tweets', base_name='minilm')
    spliced, params = restore_fusion(workdir / 'best', spliced, params)   # 'rt', 'tweets' restored first

The record names the fused adapters with their configs, sites and a digest of their weights, so a
fusion is never restored over other adapters than those it was trained over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax

from adapters_jax.checkpoint.restore import fit_leaves
from adapters_jax.checkpoint.save import CheckpointError, load_leaves, load_record, save_adapter
from adapters_jax.methods import method_from_dict
from adapters_jax.splicing import splice
from adapters_jax.splicing.fusion_layers import add_fusion
from adapters_jax.splicing.tree import Params, adapter_digest


def fusion_record(spliced: splice.Spliced, params: Params, name: str) -> dict[str, Any]:
  """What a fusion checkpoint records about the adapters it fuses (names, configs, sites, digests)."""
  config = spliced.adapter(name).method
  return {
      'adapters': list(config.adapters),
      'methods': {a: spliced.adapter(a).method.to_dict() for a in config.adapters},
      'sites': {a: [s.path for s in spliced.adapter(a).sites] for a in config.adapters},
      'digests': {a: adapter_digest(params, a) for a in config.adapters},
  }


def save_fusion(directory: str | os.PathLike, spliced: splice.Spliced, params: Params, name: str,
                mask: Params | None = None, base_name: str = '',
                extra: Mapping[str, Any] | None = None,
                base: Mapping[str, Any] | None = None) -> str:
  """Saves fusion `name` (and the head, or whatever `mask` trains besides it) on its own
  (`base`: as `save_adapter`'s).

  The record names the fused adapters with their configs, sites and a digest of their weights, so
  `restore_fusion` can refuse adapters other than those the fusion was trained over.
  """
  if not spliced.adapter(name).method.is_fusion:
    raise ValueError(f'{name!r} is not a fusion layer; save adapters with save_adapter.')
  extra = {**dict(extra or {}), 'fusion': fusion_record(spliced, params, name)}
  return save_adapter(directory, spliced, params, name, mask=mask, base_name=base_name, extra=extra,
                      base=base)


def restore_fusion(directory: str | os.PathLike, spliced: splice.Spliced, params: Params,
                   check_adapters: bool = True) -> tuple[splice.Spliced, Params]:
  """Splices a saved fusion over the already spliced adapters it fuses and loads its leaves.

  Args:
    directory: a checkpoint from `save_fusion` (or the fusion training loop).
    spliced, params: a model with the fused adapters spliced and restored.
    check_adapters: also require the fused adapters' weights to be those the fusion was trained
      over (recorded digest).

  Raises:
    CheckpointError: not a fusion checkpoint, a fused adapter that is missing, has another config,
      other sites or other weights, or leaves that do not fit (full diff).
  """
  record = load_record(directory)
  if (record.get('method') or {}).get('kind') != 'fusion':
    raise CheckpointError(f'{directory} is not a fusion checkpoint (method '
                          f'{(record.get("method") or {}).get("kind")!r}); use restore_adapter.')
  config = method_from_dict(record['method'])
  info = record['extra'].get('fusion', {})
  for adapter in config.adapters:
    if adapter not in spliced.names:
      raise CheckpointError(
          f'Fusion checkpoint {directory} fuses {list(config.adapters)}, but adapter {adapter!r} '
          f'is not spliced into this model (spliced: {list(spliced.names)}). Restore its '
          'checkpoint first, e.g. restore.restore_adapters([...]).')
    spec = spliced.adapter(adapter)
    got = json.loads(spec.method.to_json())  # lists, as in the JSON record
    if adapter in info.get('methods', {}) and info['methods'][adapter] != got:
      want = info['methods'][adapter]
      differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
      raise CheckpointError(f'Adapter {adapter!r} is not the one fusion {directory} was trained '
                            f'over: its config differs in {differ} (recorded {want}).')
    if adapter in info.get('sites', {}) and info['sites'][adapter] != [s.path for s in spec.sites]:
      raise CheckpointError(f'Adapter {adapter!r} sits at other sites than when fusion {directory}'
                            f' was trained (recorded {info["sites"][adapter]}).')
    if check_adapters and adapter in info.get('digests', {}) and \
        info['digests'][adapter] != adapter_digest(params, adapter):
      raise CheckpointError(
          f'Adapter {adapter!r} has other weights than the one fusion {directory} was trained '
          'over (digest differs): restore the matching adapter checkpoint, or pass '
          'check_adapters=False to fuse these weights anyway.')
  spliced, params = add_fusion(spliced, params, config.adapters, jax.random.key(0), config=config,
                               name=record['adapter'])
  leaves = load_leaves(directory)
  return spliced, fit_leaves(directory, params, leaves, record['adapter'])

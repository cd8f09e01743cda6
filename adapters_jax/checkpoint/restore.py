"""Adapter-only Orbax checkpoints restored onto a base model (`checkpoint.save` writes them).

Restoring loads the base model, splices the adapter from the recorded config, then overwrites the
adapter leaves (`fit_leaves`); any difference between the checkpoint and the spliced tree is
reported in full. The record's base fingerprints are checked: other parameter shapes are refused
(`check_base`), the same shapes with other weights warn (or are refused with `strict=True`).

Over one base, several task adapters sit side by side in the tree (`<site>/adapters/<name>`),
while each head is kept apart, keyed by adapter name (`restore_adapters` returns them): the base
tree has one `classifier`, and tasks differ in their label sets.

    spliced, params, heads = restore_adapters([dir_a, dir_b], model, base_params, ids, mask, types,
                                              deterministic=True)
    out = spliced.apply(params, ids, mask, types, active=PerExample('rt', 'tweets'),
                        adapter_index=index)
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from adapters_jax.checkpoint.save import (
  CheckpointError,
  base_fingerprint,
  load_leaves,
  load_record,
  overwrite_leaves,
  tree_diff,
  unsampled_paths,
  weights_fingerprint,
)
from adapters_jax.methods import method_from_dict
from adapters_jax.splicing import splice
from adapters_jax.splicing.sites import HEAD_PARAMS
from adapters_jax.splicing.tree import Params, adapter_leaves, is_adapter_path, rename_path


@dataclasses.dataclass(frozen=True)
class RestoredAdapter:
  """One restored checkpoint: its name, JSON record and task head leaves (`{path: array}`)."""

  name: str
  record: dict[str, Any]
  head: dict[str, np.ndarray]


def fit_leaves(source: str | os.PathLike, params: Params, leaves: Mapping[str, Any], name: str,
               note: str = '') -> Params:
  """`params` with a checkpoint's `leaves` written in, after checking they fit exactly.

  Expected: every leaf of adapter `name` in `params` (all must be in the checkpoint), plus the
  host leaves the checkpoint holds (norms, head) with their shapes.

  Raises:
    CheckpointError: the full diff (missing, unexpected, mis-shaped), naming `source`; `note` is
      appended to the first line.
  """
  flat = traverse_util.flatten_dict(params, sep='/')
  expected = dict(adapter_leaves(params, name))
  expected.update({p: flat[p] for p in leaves if p in flat and not is_adapter_path(p)})
  problems = tree_diff(expected, leaves)
  if problems:
    raise CheckpointError(f'Checkpoint {os.fspath(source)} does not fit this model.{note}\n  '
                          + '\n  '.join(problems))
  return overwrite_leaves(params, leaves)


def check_base_of(source: str | os.PathLike, record: Mapping[str, Any], params: Params,
                  shapes_fingerprint: str, check_base: bool, strict: bool, base_name: str) -> None:
  """Compares the record's base with the base restored onto.

  Args:
    shapes_fingerprint: `base_fingerprint` of this base as the run saw it (heads aside if needed).
    check_base: refuse other parameter shapes.
    strict: refuse other weights (same shapes) instead of warning.
    base_name: this base's name, for the messages.

  Raises:
    CheckpointError: other shapes (with `check_base`), or other weights with `strict`.
  """
  recorded = record['base']
  if check_base and recorded['fingerprint'] != shapes_fingerprint:
    raise CheckpointError(
        f'Checkpoint {os.fspath(source)} was trained on base {recorded["name"]!r} with other '
        'parameter shapes than this model (fingerprint differs); pass check_base=False to restore '
        'anyway.')
  want = recorded.get('weights_fingerprint')
  if want is None or want == weights_fingerprint(params, skip=unsampled_paths(record)):
    return
  message = (f'Checkpoint {os.fspath(source)} was trained on base {recorded["name"]!r}; the base it '
             f'is restored onto ({base_name or "unnamed"!r}) has the same shapes but other weights '
             '(weights fingerprint differs), so the adapter will not compute what it was trained '
             'to. Load the base it was trained on')
  if strict:
    raise CheckpointError(message + '.')
  warnings.warn(message + ', or pass strict=True to refuse such a restore.', stacklevel=3)


def restore_adapter(directory: str | os.PathLike, host: Any, params: Params, *sample_args,
                    check_base: bool = True, strict: bool = False, base_name: str = '',
                    **sample_kwargs) -> tuple[splice.Spliced, Params]:
  """Splices the checkpointed adapter into `params` (the freshly loaded base) and loads its leaves.

  Args:
    directory: an adapter checkpoint written by `save_adapter`.
    host: the base Linen model, or a `Spliced` one (other adapters may already be spliced).
    params: the base model's params.
    *sample_args, **sample_kwargs: one host call's arguments, for the splice's shapes.
    check_base: refuse a base whose parameter shapes differ from the recorded fingerprint.
    strict: refuse a base with the recorded shapes but other weights (default: a warning).
    base_name: the name of the base restored onto (for the messages).

  Returns:
    The spliced model and params with the adapter (and its trained norms/head) restored.

  Raises:
    CheckpointError: missing/corrupt checkpoint, another base model, or a tree that does not fit
      (with every missing, unexpected and mis-shaped leaf named).
  """
  record = load_record(directory)
  leaves = load_leaves(directory)
  name = record['adapter']
  if not name:
    raise CheckpointError(f'{os.fspath(directory)} holds no adapter (a full fine-tuning or '
                          'head-only run); load it with load_leaves and overwrite_leaves.')
  method = method_from_dict(record['method'])
  spliced, spliced_params = splice.add_adapter(host, params, name, method, jax.random.key(0),
                                               *sample_args, **sample_kwargs)
  shapes = base_fingerprint(params)
  note = ''
  if record['base']['fingerprint'] != shapes:
    note = (f' It was trained on base {record["base"]["name"]!r}, whose parameter shapes '
            'differ from this model\'s.')
  restored = fit_leaves(directory, spliced_params, leaves, name, note)
  check_base_of(directory, record, params, shapes, check_base, strict, base_name)
  return spliced, restored


def restore_adapters(directories: Sequence[str | os.PathLike], host: Any, params: Params,
                     *sample_args, check_base: bool = True, strict: bool = False,
                     base_name: str = '', rename: Sequence[str] | None = None,
                     **sample_kwargs) -> tuple[splice.Spliced, Params, dict[str, RestoredAdapter]]:
  """Splices several adapter checkpoints into one base; heads are returned, not written.

  Args:
    directories: adapter checkpoints (`save_adapter`, e.g. `<workdir>/best`).
    host: the base Linen model or a `Spliced` one.
    params: the base params (its own head stays as it is).
    *sample_args, **sample_kwargs: one host call's arguments, for the splice's shapes.
    check_base: refuse checkpoints trained on a base with other parameter shapes.
    strict: refuse checkpoints trained on a base with the same shapes but other weights (default:
      a warning).
    base_name: the name of the base restored onto (for the messages).
    rename: names to give the adapters (default: the recorded names; they must differ).

  Returns:
    The spliced model, the params with every adapter's leaves restored, and per adapter name its
    `RestoredAdapter` (record and head leaves).

  Raises:
    CheckpointError: another base, a tree that does not fit, two adapters with one name, or a
      checkpoint that also trained shared base weights (e.g. Houlsby's layer norms): over one base
      those would apply to every adapter, so train such adapters with `train_also=()`.
  """
  spliced = host if isinstance(host, splice.Spliced) else splice.Spliced(host)
  restored: dict[str, RestoredAdapter] = {}
  base_flat = traverse_util.flatten_dict(params, sep='/')
  for i, directory in enumerate(directories):
    record = load_record(directory)
    if not record.get('adapter'):
      raise CheckpointError(f'{directory} holds no adapter (a full fine-tuning or head-only run); '
                            'only adapter checkpoints share a base.')
    name = rename[i] if rename else record['adapter']
    if name in spliced.names:
      raise CheckpointError(f'Two adapters are named {name!r} ({directory}); pass rename=[...] to '
                            'give each checkpoint its own name.')
    leaves = load_leaves(directory)
    check_base_of(directory, record, params, _fingerprint_with_head(base_flat, leaves), check_base,
                  strict, base_name)
    recorded = record['adapter']
    base_leaves = [p for p in leaves if not is_adapter_path(p) and not re.fullmatch(HEAD_PARAMS, p)]
    if base_leaves:
      raise CheckpointError(
          f'Checkpoint {directory} also trained base weights {base_leaves[:4]}; several adapters '
          'over one base cannot each change them. Train the adapter with train_also=() (e.g. '
          "--config.method_options.train_also='()') or use pfeiffer / lora.")
    method = method_from_dict(record['method'])
    spliced, params = splice.add_adapter(spliced, params, name, method, jax.random.key(0),
                                         *sample_args, **sample_kwargs)
    adapter = {rename_path(p, recorded, name): v for p, v in leaves.items()
               if is_adapter_path(p, recorded)}
    params = fit_leaves(directory, params, adapter, name)
    head = {p: v for p, v in leaves.items() if re.fullmatch(HEAD_PARAMS, p)}
    restored[name] = RestoredAdapter(name=name, record=record, head=head)
  return spliced, params, restored


def _fingerprint_with_head(base_flat: dict[str, Any], leaves: dict[str, Any]) -> str:
  """The base fingerprint as the checkpoint's run saw it: this base, with the checkpoint's head
  (tasks differ in their number of labels, which is not a different base)."""
  flat = {p: v for p, v in base_flat.items() if not re.fullmatch(HEAD_PARAMS, p)}
  flat.update({p: v for p, v in leaves.items() if re.fullmatch(HEAD_PARAMS, p)})
  return base_fingerprint(traverse_util.unflatten_dict(flat, sep='/'))

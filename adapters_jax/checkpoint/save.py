"""Adapter-only Orbax checkpoint files: the record, saving, loading, and comparing leaf maps.

A checkpoint directory holds two Orbax items:
  * `params`: one adapter's whole subtree (its frozen leaves too: VeRA's stored projections) plus
    whatever trained with it (layer norms, task head); never a frozen base weight;
  * `record`: JSON with the adapter's name, its method config, the base model's identity (name, a
    fingerprint of its parameter shapes and one of a fixed sample of its weights) and the library
    version.

Restoring (splicing, then writing the leaves in) is `adapters_jax.checkpoint.restore`'s, one floor up.

Saving writes to a temporary sibling directory and swaps it in with renames, so a failed save never
replaces a good checkpoint. The directory records a digest of its files (`checkpoint.digest`),
compared before any file is read: a damaged checkpoint is refused in one line (`CheckpointError`)
instead of Orbax failing halfway through a read.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from adapters_jax.checkpoint import disk_full
from adapters_jax.checkpoint.digest import DIGEST_FILE, differing_files, write_digests
from adapters_jax.methods import method_from_dict
from adapters_jax.splicing import trainable
from adapters_jax.splicing.splice import Spliced
from adapters_jax.splicing.tree import Params, adapter_leaves, is_adapter_path
from adapters_jax.version import __version__

FORMAT = 'adapters_jax.adapter/1'


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupt, or does not fit the model it is restored onto."""


# The training checkpoints hold the last steps' state, not the best params: a damaged best/ cannot
# be rebuilt from them.
DAMAGED_FIX = 'restore a copy of it, or train its run again (in a fresh workdir).'


def base_fingerprint(params: Params) -> str:
  """sha256 of the sorted (path, shape, dtype) of every non-adapter leaf: the base model's shape."""
  flat = traverse_util.flatten_dict(params, sep='/')
  digest = hashlib.sha256()
  for path in sorted(flat):
    if is_adapter_path(path):
      continue
    leaf = flat[path]
    digest.update(f'{path}:{tuple(np.shape(leaf))}:{np.dtype(leaf.dtype).name};'.encode())
  return digest.hexdigest()


# Values hashed per leaf: enough to tell two checkpoints of one architecture apart, cheap for any size.
WEIGHT_SAMPLES = 64


def weights_fingerprint(params: Params, skip: Iterable[str] = ()) -> str:
  """sha256 of a fixed strided sample of every non-adapter leaf's values (leaves in `skip` aside).

  Which base *weights* these are, not only which shapes: two checkpoints of one architecture (or a
  random init) differ here. `skip` names leaves a run trains (its head, layer norms), whose base
  values do not matter. Only `WEIGHT_SAMPLES` values per leaf leave the device.
  """
  skip = set(skip)
  flat = traverse_util.flatten_dict(params, sep='/')
  digest = hashlib.sha256()
  for path in sorted(flat):
    if is_adapter_path(path) or path in skip:
      continue
    leaf = flat[path]
    size = int(np.prod(np.shape(leaf)))
    picks = np.unique(np.linspace(0, max(size - 1, 0), num=min(size, WEIGHT_SAMPLES)).astype(np.int64))
    values = leaf.reshape(-1) if isinstance(leaf, np.ndarray) else jax.numpy.ravel(leaf)
    sample = np.asarray(jax.device_get(values[picks]), np.float32)  # [<= WEIGHT_SAMPLES]
    digest.update(f'{path}:{size};'.encode())
    digest.update(np.ascontiguousarray(sample).tobytes())
  return digest.hexdigest()


def base_record(params: Params, base_name: str, trained_paths: Iterable[str]) -> dict[str, Any]:
  """The record's `base` entry: the base's name, shape fingerprint and weights fingerprint."""
  return {'name': base_name, 'fingerprint': base_fingerprint(params),
          'weights_fingerprint': weights_fingerprint(params, skip=trained_paths)}


def unsampled_paths(record: Mapping[str, Any]) -> list[str]:
  """The leaves a record's weights fingerprint leaves out: those the run trains, and the kernels an
  adapter that changes its base (PiSSA, OLoRA: `MethodConfig.changes_base`) holds as residuals."""
  method = record['method'] and method_from_dict(record['method'])
  residuals = [f'{site}/kernel' for site in record['sites']] if method and method.changes_base else []
  return sorted(record['trained_paths']) + residuals


def tree_diff(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
  """Every difference between two flat `{path: array}` maps: missing, unexpected, mis-shaped."""
  lines = [f'missing:    {p} {tuple(np.shape(expected[p]))}' for p in sorted(expected.keys() - found.keys())]
  lines += [f'unexpected: {p} {tuple(np.shape(found[p]))}' for p in sorted(found.keys() - expected.keys())]
  for p in sorted(expected.keys() & found.keys()):
    want, got = tuple(np.shape(expected[p])), tuple(np.shape(found[p]))
    if want != got:
      lines.append(f'shape:      {p} expected {want}, checkpoint has {got}')
  return lines


def overwrite_leaves(params: Params, leaves: Mapping[str, Any], what: str = 'checkpoint') -> Params:
  """Returns `params` with `leaves` (`{path: array}`) written in; all must exist with equal shapes.

  Raises:
    CheckpointError: the full diff, when a leaf is unknown or mis-shaped.
  """
  flat = traverse_util.flatten_dict(params, sep='/')
  expected = {p: flat[p] for p in leaves if p in flat}
  problems = [line for line in tree_diff(expected, leaves) if not line.startswith('missing')]
  if problems:
    raise CheckpointError(f'The {what} does not fit the model:\n  ' + '\n  '.join(problems))
  flat.update({p: jax.numpy.asarray(v, dtype=flat[p].dtype) for p, v in leaves.items()})
  return traverse_util.unflatten_dict(flat, sep='/')


def save_trained(directory: str | os.PathLike, params: Params, mask: Params, base_name: str = '',
                 extra: Mapping[str, Any] | None = None,
                 base: Mapping[str, Any] | None = None) -> str:
  """Saves the leaves `mask` marks trainable (full fine-tuning, head only) with a JSON record.

  The same layout as `save_adapter` (`base` as there), with `adapter` null; load with
  `load_leaves` and `overwrite_leaves`.
  """
  to_save, _ = trainable.split(params, mask)
  trained_paths = sorted(traverse_util.flatten_dict(to_save, sep='/'))
  record = {
      'format': FORMAT,
      'library_version': __version__,
      'adapter': None,
      'method': None,
      'sites': [],
      'base': dict(base) if base is not None else base_record(params, base_name, trained_paths),
      'trained_paths': trained_paths,
      'extra': dict(extra or {}),
  }
  directory = os.path.abspath(os.fspath(directory))
  atomic_write(directory, jax.device_get(to_save), record)
  return directory


def make_record(spliced: Spliced, params: Params, name: str, base_name: str,
                trained_paths: list[str], extra: Mapping[str, Any] | None = None,
                base: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The JSON record saved beside an adapter's params (`base`: as `save_adapter`'s)."""
  spec = spliced.adapter(name)
  record = {
      'format': FORMAT,
      'library_version': __version__,
      'adapter': name,
      'method': spec.method.to_dict(),
      'sites': [site.path for site in spec.sites],
      'trained_paths': sorted(trained_paths),
      'extra': dict(extra or {}),
  }
  if base is not None:
    return {**record, 'base': dict(base)}
  return {**record, 'base': base_record(params, base_name, unsampled_paths(record))}


def save_adapter(directory: str | os.PathLike, spliced: Spliced, params: Params, name: str,
                 mask: Params | None = None, base_name: str = '',
                 extra: Mapping[str, Any] | None = None,
                 base: Mapping[str, Any] | None = None) -> str:
  """Saves adapter `name` (every leaf of it, and the other leaves `mask` marks trainable) to `directory`.

  Args:
    directory: destination; an existing checkpoint there is replaced only after the new one is
      completely written.
    spliced, params: the spliced model and its params.
    name: the adapter to save.
    mask: trainable mask (see `trainable.make_mask`); default: the adapter's own leaves plus what its
      method trains with it, and the task head.
    base_name: the base model's name or path (recorded, for `restore_adapter` and for people).
    extra: more JSON-able facts to record (e.g. task, label names).
    base: the record's `base` entry when the caller took it (a quantised base: the float base's
      `base_record` plus its `quantization`); None: `base_record` of `params`.

  Returns:
    The checkpoint directory.
  """
  spec = spliced.adapter(name)
  if spec.merged:
    raise ValueError(f'Adapter {name!r} is merged into the base weights; unmerge it before saving.')
  if mask is None:
    mask = trainable.make_mask(params, trainable.adapter_rules([spec]))
  to_save, _ = trainable.split(params, mask)
  trained = traverse_util.flatten_dict(to_save, sep='/')
  if not any(is_adapter_path(p, name) for p in trained):
    raise ValueError(f'The mask marks none of adapter {name!r} leaves as trainable.')
  foreign = [p for p in trained if is_adapter_path(p) and not is_adapter_path(p, name)]
  if foreign:
    raise ValueError(f'The mask also selects other adapters\' leaves: {foreign[:5]}; save each '
                     'adapter on its own.')
  record = make_record(spliced, params, name, base_name, list(trained), extra, base)
  # Every leaf of the adapter, the frozen ones too (VeRA's stored projections), so a restore fits.
  saved = {**adapter_leaves(params, name), **trained}
  directory = os.path.abspath(os.fspath(directory))
  atomic_write(directory, jax.device_get(traverse_util.unflatten_dict(saved, sep='/')), record)
  return directory


def atomic_write(directory: str, tree: Params, record: dict[str, Any]) -> None:
  parent, base = os.path.split(directory)
  os.makedirs(parent, exist_ok=True)
  tag = uuid.uuid4().hex[:8]
  tmp = os.path.join(parent, f'.{base}.tmp-{tag}')
  old = os.path.join(parent, f'.{base}.old-{tag}')
  # Written by the calling process alone (in a multi-process run, process 0): no barrier with
  # processes that do not save.
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      composite_options=ocp.CompositeOptions(multiprocessing_options=alone)),
      multiprocessing_options=alone)
  intact = f'{directory} (as before)' if os.path.exists(directory) else ''
  # Orbax itself writes into `<tmp>.orbax-checkpoint-tmp...` first: every partial copy goes.
  partial = lambda: glob.glob(glob.escape(tmp) + '*')
  try:
    with disk_full.reporting(directory, disk_full.tree_bytes(tree), partial, intact):
      checkpointer.save(tmp, ocp.args.Composite(params=ocp.args.StandardSave(tree),
                                                record=ocp.args.JsonSave(record)))
      write_digests(tmp)
  except BaseException:
    for leftover in partial():
      shutil.rmtree(leftover, ignore_errors=True)
    raise
  if os.path.exists(directory):
    os.rename(directory, old)
    os.rename(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, directory)


def load_record(directory: str | os.PathLike) -> dict[str, Any]:
  """The JSON record of an adapter checkpoint, once its files match their digest.

  Raises:
    CheckpointError: no checkpoint there, damaged files, or not our format (one line).
  """
  directory = os.fspath(directory)
  path = os.path.join(directory, 'record', 'metadata')
  if not os.path.isdir(directory):
    raise CheckpointError(f'No checkpoint at {directory}.')
  if not os.path.exists(path):
    raise CheckpointError(f'{directory} is not a complete adapter checkpoint: {path} is missing '
                          '(an interrupted save, or not made by save_adapter).')
  check_files(directory)
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'The record of checkpoint {directory} is unreadable: {e}') from e
  if record.get('format') != FORMAT:
    raise CheckpointError(f'{directory} has format {record.get("format")!r}, expected {FORMAT!r}.')
  return record


def check_files(directory: str) -> None:
  """Raises CheckpointError when a file of the checkpoint in `directory` differs from its digest
  (a checkpoint saved before digests is not checked)."""
  try:
    differ = differing_files(directory)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'Checkpoint {directory} is damaged: its {DIGEST_FILE} is unreadable '
                          f'({e}); {DAMAGED_FIX}') from e
  if differ:
    raise CheckpointError(f'Checkpoint {directory} is damaged: {len(differ)} file(s) differ from '
                          f'its {DIGEST_FILE} (e.g. {differ[0]}); {DAMAGED_FIX}')


def load_leaves(directory: str | os.PathLike) -> dict[str, np.ndarray]:
  """The saved leaves of an adapter checkpoint as `{path: array}`."""
  directory = os.path.abspath(os.fspath(directory))
  load_record(directory)
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    restored = checkpointer.restore(directory, ocp.args.Composite(params=ocp.args.StandardRestore()))
    tree = restored['params']
  except Exception as e:  # Orbax raises many kinds of errors on damaged files.
    raise CheckpointError(f'Checkpoint {directory} is corrupt or truncated and cannot be read '
                          f'({type(e).__name__}: {str(e)[:300]}).') from e
  return {p: np.asarray(v) for p, v in traverse_util.flatten_dict(tree, sep='/').items()}

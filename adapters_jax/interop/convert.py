"""Export our adapter checkpoints to AdapterHub or PEFT directories, and import theirs as ours.

    export_checkpoint('workdirs/rte/best', 'peft', 'exports/rte-lora')
    import_checkpoint('downloads/rte-lora', 'peft', model='roberta-base', out='imported/rte')

The exported files carry our base identity (name, shape fingerprint, weights fingerprint when the
record has one) in their safetensors metadata, so importing them onto another base is refused.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable

from adapters_jax.checkpoint import disk_full
from adapters_jax.interop import (
  adapterhub,
  adapterhub_import,
  adapterhub_prompts,
  peft,
  peft_import,
  principal_lora,
)
from adapters_jax.interop.naming import InteropError, model_type_from_leaves
from adapters_jax.interop.output_directory import refuse_to_mix, staged_directory
from adapters_jax.interop.peft_names import ENCODER_MODEL_TYPES, MODEL_TYPES
from adapters_jax.interop.portable import PortableAdapter, read_checkpoint, write_checkpoint
from adapters_jax.models import SHORT_NAMES, resolve_checkpoint_dir
from adapters_jax.models.hf_files import read_hf_config

# format -> (export, import) functions.
FORMATS = {'adapters': (adapterhub.export_adapter, adapterhub_import.import_adapter),
           'peft': (peft.export_adapter, peft_import.import_adapter)}


def _format(name: str):
  if name not in FORMATS:
    raise InteropError(f'Unknown format {name!r}; valid formats: {sorted(FORMATS)}.')
  return FORMATS[name]


def _model_type(leaves, base_name: str, model_type: str | None, fmt: str, kind: str) -> str:
  """The transformers model type the export is for: given, from the head, or from the base's config."""
  if model_type is None:
    model_type = model_type_from_leaves(leaves)
  if model_type is None and base_name and (base_name in SHORT_NAMES or pathlib.Path(base_name).is_dir()):
    config = json.loads((resolve_checkpoint_dir(base_name) / 'config.json').read_text())
    model_type = config['model_type']
  if model_type is None:
    raise InteropError(f'Cannot tell the model type of base {base_name!r} (no head, no local config.json); '
                       f'pass model_type (--model_type), one of {list(MODEL_TYPES)}.')
  valid = MODEL_TYPES
  if fmt == 'adapters':
    valid = (*adapterhub_prompts.FAMILIES, 't5') if kind == 'prefix_tuning' else ENCODER_MODEL_TYPES
  if model_type not in valid:
    raise InteropError(f'model_type {model_type!r} is not supported by --format={fmt}; valid: {list(valid)}.')
  return model_type


def export_checkpoint(directory: str | os.PathLike, fmt: str, out: str | os.PathLike,
                      model_type: str | None = None, overwrite: bool = False,
                      notify: Callable[[str], None] | None = None) -> pathlib.Path:
  """Exports the adapter checkpoint `directory` (`save_adapter` format) to `out` in format `fmt`.

  Args:
    directory: an adapter checkpoint (e.g. a training run's `best/`).
    fmt: `adapters` (AdapterHub) or `peft`.
    out: the directory to write: absent or empty, unless `overwrite`.
    model_type: transformers' model type (`peft_names.MODEL_TYPES`; `bert`/`roberta` for `adapters`);
      default: from the trained head or the base's config.json.
    overwrite: replace a non-empty `out` whole (see `output_directory.staged_directory`).
    notify: called with a one-line note on what the export does in the other library, when it says
      more than the files (AdapterHub: trained base layer norms; `adapterhub.base_leaves_notice`).
  """
  _format(fmt)
  refuse_to_mix(out, overwrite=overwrite)
  adapter = principal_lora.as_plain_lora(read_checkpoint(directory))  # PiSSA/OLoRA: on the base W
  return export_portable(adapter, fmt, out, model_type, overwrite, notify)


def export_portable(adapter: PortableAdapter, fmt: str, out: str | os.PathLike,
                    model_type: str | None = None, overwrite: bool = False,
                    notify: Callable[[str], None] | None = None) -> pathlib.Path:
  """Exports `adapter` (its leaves at our paths) to `out` in format `fmt`; the arguments as
  `export_checkpoint`'s."""
  export, _ = _format(fmt)
  refuse_to_mix(out, overwrite=overwrite)
  model_type = _model_type(adapter.leaves, adapter.base.get('name', ''), model_type, fmt, adapter.method.kind)
  with disk_full.reporting(out, _bytes(adapter)), staged_directory(out, overwrite=overwrite) as staging:
    export(adapter, staging, model_type)
  notice = adapterhub.base_leaves_notice(adapter) if fmt == 'adapters' else None
  if notice and notify:
    notify(notice)
  return pathlib.Path(out)


def import_checkpoint(directory: str | os.PathLike, fmt: str, model: str, out: str | os.PathLike,
                      name: str | None = None, allow_other_base: bool = False,
                      overwrite: bool = False) -> str:
  """Imports an AdapterHub or PEFT directory as one of our adapter checkpoints on base `model`.

  Args:
    directory: the directory `save_adapter` (AdapterHub) or `save_pretrained` (PEFT) wrote.
    fmt: `adapters` or `peft`.
    model: our base model (short name, directory or hub id) the adapter belongs to.
    out: the adapter checkpoint directory to write: absent or empty, unless `overwrite`.
    name: the adapter's name (default: AdapterHub's saved name; for PEFT, the folder's name).
    allow_other_base: load even when the files say they were made on another base.
    overwrite: replace a non-empty `out` whole.
  """
  _, read = _format(fmt)
  refuse_to_mix(out, overwrite=overwrite)
  if fmt == 'peft':  # PEFT files do not name the adapter (nor T5's decoder depth)
    adapter = read(directory, name or pathlib.Path(directory).resolve().name,
                   read_hf_config(resolve_checkpoint_dir(model)))
  else:
    adapter = read(directory)
    if name:
      adapter = _renamed(adapter, name)
  source = {'format': fmt, 'path': os.path.abspath(os.fspath(directory))}
  with disk_full.reporting(out, _bytes(adapter)), staged_directory(out, overwrite=overwrite) as staging:
    write_checkpoint(adapter, model, staging, source=source, allow_other_base=allow_other_base)
  return os.path.abspath(os.fspath(out))


def _renamed(adapter, name: str):
  import dataclasses

  old = f'/adapters/{adapter.name}/'
  leaves = {('/' + p).replace(old, f'/adapters/{name}/')[1:]: v for p, v in adapter.leaves.items()}
  return dataclasses.replace(adapter, name=name, leaves=leaves)


def _bytes(adapter) -> int:
  """About what an export or import of `adapter` writes (its arrays)."""
  return sum(int(v.nbytes) for v in adapter.leaves.values())

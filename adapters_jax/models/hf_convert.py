"""Hugging Face tensors -> our flat param paths, by a family's explicit name-mapping table.

Family-independent: BERT/RoBERTa (`bert_import`), T5 (`t5_import`) and the decoders
(`decoder_import`) each pass their table, the names they drop on purpose and the parts that may be
absent. A checkpoint that does not fit is reported in full (missing, unexpected, mis-shaped) in one
`CheckpointMismatchError`. `merge_into_model` does the whole merge for a model: the reference
shapes from its plain layout, the conversion, fresh init of optional parts, the scan layout.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from adapters_jax.models import scan_layout

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model; the message lists every difference."""


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What happened to each name while merging a checkpoint into the model's tree."""

  loaded: tuple[str, ...]   # our paths filled from the file
  fresh: tuple[str, ...]    # our optional paths absent from the file, initialised fresh
  skipped: tuple[str, ...]  # file names mapped to optional parts this model does not have
  ignored: tuple[str, ...]  # file names matching the ignored keys


def convert_hf_tensors(
    tensors: Mapping[str, np.ndarray], reference: Mapping[str, jax.ShapeDtypeStruct], *,
    name_to_ours: Callable[[str], tuple[str, Callable] | None], ignored_keys: Sequence[str],
    optional_prefixes: tuple[str, ...], hint: str,
) -> tuple[dict[str, np.ndarray], LoadReport]:
  """Maps HF tensors onto `reference` (our flat '/'-paths -> shapes, plain layout).

  Returns the float32 arrays for every reference path found in the file and a report; raises
  CheckpointMismatchError listing every missing, unexpected and mis-shaped name at once.

  Args:
    tensors: HF name -> array, as read from the files.
    reference: our flat '/'-path -> shape (`jax.eval_shape` of the plain model's init).
    name_to_ours: the family's table: HF name -> (our path, transform), or None.
    ignored_keys: regexes of HF names that are dropped on purpose (buffers, tied copies).
    optional_prefixes: our paths that may be absent from the file (initialised fresh).
    hint: the closing line of the error (what to check).
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


def merge_into_model(model: nn.Module, sample_args: Sequence[Any], tensors: Mapping[str, np.ndarray],
                     depths: Mapping[str, int], *, seed: int = 0, **table: Any
                     ) -> tuple[dict[str, Any], LoadReport]:
  """Float32 params for `model` from HF `tensors` (stacked when its config has `scan_layers`).

  Args:
    model: a backbone whose `config` has `scan_layers` and `remat`.
    sample_args: positional arguments of one `model.init` call (only their shapes matter).
    tensors: HF name -> array.
    depths: `{stack: number of layers}` for `scan_layout.stack_layers`.
    seed: initialises the optional parts absent from the file.
    **table: `convert_hf_tensors`'s keyword arguments (the family's name mapping and rules).

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and mis-shaped name.
  """
  plain = model.clone(config=model.config.replace(scan_layers=False, remat=False))
  init = lambda key: plain.init(key, *sample_args)['params']
  key = jax.random.key(seed)
  reference = traverse_util.flatten_dict(jax.eval_shape(init, key), sep='/')
  flat, report = convert_hf_tensors(tensors, reference, **table)
  if report.fresh:
    log.info('Initialising fresh (absent from the checkpoint): %s', list(report.fresh))
    fresh = traverse_util.flatten_dict(jax.jit(init)(key), sep='/')
    flat.update({p: fresh[p] for p in report.fresh})
  if report.skipped:
    log.info('Not used by this model (skipped): %s', list(report.skipped))
  if report.ignored:
    log.info('Ignored (buffers, pre-training heads, tied copies): %s', list(report.ignored))
  params = traverse_util.unflatten_dict(
      {p: jnp.asarray(v, jnp.float32) for p, v in flat.items()}, sep='/')
  if model.config.scan_layers:
    params = scan_layout.stack_layers(params, depths)
  return params, report

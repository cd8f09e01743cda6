"""Hugging Face tensors -> our flat param paths, by a family's explicit name-mapping table.

Family-independent: BERT/RoBERTa (`bert_import`), T5 (`t5_import`) and the decoders
(`decoder_import`) each pass their table, the names they drop on purpose and the parts that may be
absent. A checkpoint that does not fit is reported in full (missing, unexpected, mis-shaped) in one
`CheckpointMismatchError`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np


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

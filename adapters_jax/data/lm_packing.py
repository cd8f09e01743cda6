"""Rows of language-model examples: one example per row, or several packed into one row.

A row of length `L` holds whole examples one after the other (`segment_ids` 1, 2, ... per
example, 0 on padding at the end); each example's `positions` start at 0, and the decoder's
`segment_ids` argument keeps attention inside an example, so a packed example computes exactly
what it would alone. Targets are next-token ids within the same example: at position t the model
predicts token t+1 when it belongs to the same example and is a target (`target_mask`), so the
last token of an example never predicts the first of the next.

Packing is greedy first-fit in the given order (shuffle first): an example goes into the first
open row with room; rows stay in creation order. Examples longer than `L` are refused (cut them at
tokenisation with the same `max_length`).

Example:
  plan = pack_rows([len(e.input_ids) for e in examples], row_length=512)   # [[0, 3], [1], ...]
  batch = rows_batch(examples, plan[:8], row_length=512)
  batch['input_ids'].shape                                               # (8, 512)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapters_jax.data.lm_jsonl import LMExample

# The arrays of a batch of rows, all `[rows, row_length]`.
ROW_KEYS = ('input_ids', 'attention_mask', 'positions', 'segment_ids', 'targets', 'weights')


def pack_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
  """Example indices per row: greedy first-fit of `lengths` into rows of `row_length` tokens."""
  rows: list[list[int]] = []
  free: list[int] = []
  for index, length in enumerate(lengths):
    if length > row_length:
      raise ValueError(f'Example {index} has {length} tokens, more than a row of {row_length}; '
                       'tokenise with max_length <= the row length.')
    for r, room in enumerate(free):
      if length <= room:
        rows[r].append(index)
        free[r] -= length
        break
    else:
      rows.append([index])
      free.append(row_length - length)
  return rows


def single_rows(count: int) -> list[list[int]]:
  """One example per row (evaluation: per-row sums are per-example sums)."""
  return [[i] for i in range(count)]


def rows_batch(examples: Sequence[LMExample], plan: Sequence[Sequence[int]],
               row_length: int) -> dict[str, np.ndarray]:
  """The arrays of `ROW_KEYS` for rows `plan` (lists of example indices), each `[rows, L]`.

  `weights` is float32, 1.0 where `targets` is a token to learn; `attention_mask` is int32.
  """
  shape = (len(plan), row_length)
  out = {k: np.zeros(shape, np.float32 if k == 'weights' else np.int32) for k in ROW_KEYS}
  for r, indices in enumerate(plan):
    start = 0
    for segment, index in enumerate(indices, start=1):
      ids, mask = examples[index].input_ids, examples[index].target_mask
      n = len(ids)
      if start + n > row_length:
        raise ValueError(f'Row {r} holds {start + n} tokens, more than {row_length}.')
      span = slice(start, start + n)
      out['input_ids'][r, span] = ids
      out['attention_mask'][r, span] = 1
      out['positions'][r, span] = np.arange(n)
      out['segment_ids'][r, span] = segment
      out['targets'][r, start:start + n - 1] = ids[1:]  # token t+1 of the same example
      out['weights'][r, start:start + n - 1] = mask[1:]
      start += n
  return out

"""`LMDataset`: tokenised language-model examples laid out in rows, batched for the training loop.

A batching source (`lengths`, `max_length`, `batch(...)`, as `TrainBatches` and `eval_batches`
use it) whose items are rows of `lm_packing`: several examples per row when packed, one otherwise.
A batch has the row arrays (`input_ids`, `attention_mask`, `positions`, `segment_ids`,
`targets`, `weights`, `[B, L]`, L the length bucket of the longest row of the global batch) and
`example_mask` `[B]`. With `prompts` (generation tasks; one example per row) it also has
  prompt_ids     int32 [B, P]  the example's prompt, left-padded with `pad_id`
  prompt_mask    int32 [B, P]  1 on prompt tokens
  example_index  int32 [B]     `first_index` + the example's index in the dataset
(P: the bucket of the longest prompt of the global batch), what generation starts from.

Example:
  dataset = LMDataset.build(examples, row_length=512, pack=True, pad_id=0)
  batch = dataset.batch(np.arange(8), np.arange(8), length_buckets(512))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from adapters_jax.data.buckets import bucket_length, length_buckets
from adapters_jax.data.lm_jsonl import LMExample
from adapters_jax.data.lm_packing import pack_rows, rows_batch, single_rows


@dataclasses.dataclass(frozen=True)
class LMDataset:
  """Rows of examples; see the module docstring.

  Attributes:
    examples: the tokenised examples.
    plan: per row, the indices of its examples (in order).
    row_length: no row holds more tokens (the run's `max_length`).
    pad_id: left padding of prompts.
    prompts: add `prompt_ids`, `prompt_mask`, `example_index` to batches (needs one example per
      row).
    first_index: added to `example_index` (examples of several splits get distinct indices).
  """

  examples: tuple[LMExample, ...]
  plan: tuple[tuple[int, ...], ...]
  row_length: int
  pad_id: int
  prompts: bool = False
  first_index: int = 0

  @classmethod
  def build(cls, examples: Sequence[LMExample], row_length: int, *, pack: bool, pad_id: int,
            prompts: bool = False, first_index: int = 0) -> LMDataset:
    """Packs `examples` first-fit in their order when `pack`, else one example per row."""
    if pack and prompts:
      raise ValueError('Generation evaluates one example per row: packing and prompts exclude '
                       'each other.')
    plan = (pack_rows([len(e.input_ids) for e in examples], row_length) if pack
            else single_rows(len(examples)))
    return cls(tuple(examples), tuple(tuple(r) for r in plan), row_length, pad_id, prompts,
               first_index)

  def __len__(self) -> int:
    return len(self.plan)

  @property
  def lengths(self) -> np.ndarray:
    """int32 [rows]: tokens per row."""
    sizes = [len(e.input_ids) for e in self.examples]
    return np.asarray([sum(sizes[i] for i in row) for row in self.plan], np.int32)

  @property
  def max_length(self) -> int:
    return self.row_length

  @property
  def target_tokens(self) -> int:
    """Tokens the loss reads (targets after the first token of each example)."""
    return int(sum(e.target_mask[1:].sum() for e in self.examples))

  def batch(self, indices: np.ndarray, shape_indices: np.ndarray, buckets: Sequence[int],
            example_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Rows `indices`, padded to the bucket of the longest row of `shape_indices`."""
    indices = np.asarray(indices, np.int64)
    lengths = self.lengths
    seq_len = bucket_length(int(lengths[np.asarray(shape_indices, np.int64)].max()), buckets)
    out = rows_batch(self.examples, [self.plan[i] for i in indices], seq_len)
    if self.prompts:
      out.update(self._prompts(indices, shape_indices))
    out['example_mask'] = (np.ones(len(indices), np.float32) if example_mask is None
                           else np.asarray(example_mask, np.float32))
    return out

  def _prompts(self, indices, shape_indices) -> dict[str, np.ndarray]:
    longest = max(len(self.examples[self.plan[i][0]].prompt_ids) for i in shape_indices)
    width = bucket_length(max(longest, 1), length_buckets(self.row_length))
    ids = np.full((len(indices), width), self.pad_id, np.int32)
    mask = np.zeros((len(indices), width), np.int32)
    for r, i in enumerate(indices):
      prompt = self.examples[self.plan[i][0]].prompt_ids
      if len(prompt):
        ids[r, width - len(prompt):] = prompt
        mask[r, width - len(prompt):] = 1
    index = np.asarray([self.first_index + self.plan[i][0] for i in indices], np.int32)
    return {'prompt_ids': ids, 'prompt_mask': mask, 'example_index': index}

  def subset(self, indices) -> LMDataset:
    """The rows `indices` (in that order); example indices are kept."""
    rows = tuple(self.plan[i] for i in np.asarray(indices, np.int64))
    return dataclasses.replace(self, plan=rows)

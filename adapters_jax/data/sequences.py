"""`SequenceDataset`: per-example token sequences under named batch keys, padded per key.

The generic dataset of the task kinds that are not encoder classification: a sequence-to-sequence
kind stores the source tokens and the target tokens, a causal-LM kind the tokens and a loss mask.
Each sequence is stored ragged (one flat array plus offsets, no padding) and padded at batch time
to its own length bucket (the smallest bucket >= its longest row in the *global* batch), with its
own pad value and, if asked, a 0/1 mask under a batch key of its own. Per-example fields (a class
id, a regression target) are gathered as they are.

Example:
  data = SequenceDataset(
      sequences={'input_ids': Ragged.from_rows(sources, pad_value=0, max_length=64,
                                               mask_key='attention_mask'),
                 'target_ids': Ragged.from_rows(targets, pad_value=0, max_length=8,
                                                mask_key='target_mask')},
      fields={'labels': np.asarray(labels)}, length_key='input_ids')
  batch = data.batch(np.arange(4), np.arange(4), length_buckets(64))
  # input_ids [4, L_src], attention_mask [4, L_src], target_ids [4, L_tgt], target_mask
  # [4, L_tgt], labels [4], example_mask [4]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from adapters_jax.data.buckets import bucket_length, length_buckets


@dataclasses.dataclass(frozen=True)
class Ragged:
  """Int token rows of different lengths, stored without padding.

  Attributes:
    values: int32 [total], every row concatenated.
    offsets: int64 [N + 1]; row i is values[offsets[i]:offsets[i + 1]].
    pad_value: what fills a padded batch after a row's end.
    max_length: no row is longer; its buckets are `length_buckets(max_length)`.
    mask_key: the batch key of this sequence's mask (int32, 1 on real positions), or None.
  """

  values: np.ndarray
  offsets: np.ndarray
  pad_value: int
  max_length: int
  mask_key: str | None = None

  @classmethod
  def from_rows(cls, rows: Sequence[Sequence[int]], *, pad_value: int, max_length: int,
                mask_key: str | None = None) -> Ragged:
    """Raises ValueError when a row is longer than `max_length` (truncate before)."""
    lengths = np.asarray([len(r) for r in rows], np.int64)
    if len(lengths) and lengths.max() > max_length:
      raise ValueError(f'A row has {lengths.max()} tokens, more than max_length={max_length}; '
                       'truncate the rows first or raise max_length.')
    values = (np.concatenate([np.asarray(r, np.int32) for r in rows]) if len(rows) and lengths.sum()
              else np.zeros(0, np.int32))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return cls(values.astype(np.int32), offsets, int(pad_value), int(max_length), mask_key)

  @property
  def lengths(self) -> np.ndarray:
    """int32 [N]."""
    return np.diff(self.offsets).astype(np.int32)

  def pad(self, indices: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows `indices` padded to `seq_len`: (values int32 [B, L], mask int32 [B, L])."""
    lengths = self.lengths[indices]  # [B]
    positions = np.arange(seq_len)[None, :]  # [1, L]
    valid = positions < lengths[:, None]  # [B, L]
    flat = np.minimum(self.offsets[indices][:, None] + positions, max(len(self.values) - 1, 0))
    values = self.values[flat] if len(self.values) else np.zeros(flat.shape, np.int32)
    return np.where(valid, values, self.pad_value).astype(np.int32), valid.astype(np.int32)

  def subset(self, indices: np.ndarray) -> Ragged:
    rows = [self.values[self.offsets[i]:self.offsets[i + 1]] for i in indices]
    return Ragged.from_rows(rows, pad_value=self.pad_value, max_length=self.max_length,
                            mask_key=self.mask_key)


@dataclasses.dataclass(frozen=True)
class SequenceDataset:
  """Examples as named token sequences plus per-example fields; a `batching.BatchSource`.

  Attributes:
    sequences: batch key -> its rows (all with the same number of rows).
    fields: batch key -> per-example array [N, ...] (e.g. `labels` [N]).
    length_key: the sequence that length sorting and the batching's buckets go by; every other
      sequence is padded to `length_buckets` of its own `max_length`.
  """

  sequences: Mapping[str, Ragged]
  fields: Mapping[str, np.ndarray]
  length_key: str

  def __post_init__(self):
    if self.length_key not in self.sequences:
      raise ValueError(f'length_key={self.length_key!r} is not one of the sequences '
                       f'{sorted(self.sequences)}.')
    sizes = {k: len(v.offsets) - 1 for k, v in self.sequences.items()}
    sizes.update({k: len(v) for k, v in self.fields.items()})
    if len(set(sizes.values())) != 1:
      raise ValueError(f'Sequences and fields differ in their number of examples: {sizes}.')

  def __len__(self) -> int:
    return len(self.sequences[self.length_key].offsets) - 1

  @property
  def lengths(self) -> np.ndarray:
    """int32 [N]: lengths of the `length_key` sequence."""
    return self.sequences[self.length_key].lengths

  @property
  def max_length(self) -> int:
    return self.sequences[self.length_key].max_length

  def batch(self, indices: np.ndarray, shape_indices: np.ndarray, buckets: Sequence[int],
            example_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Rows `indices`, each sequence padded to its bucket for the longest row of `shape_indices`;
    `example_mask` float32 [B] (None: all ones)."""
    indices = np.asarray(indices, np.int64)
    shape_indices = np.asarray(shape_indices, np.int64)
    out = {}
    for key, rows in self.sequences.items():
      own = buckets if key == self.length_key else length_buckets(rows.max_length)
      seq_len = bucket_length(int(rows.lengths[shape_indices].max()), own)
      out[key], mask = rows.pad(indices, seq_len)
      if rows.mask_key:
        out[rows.mask_key] = mask
    for key, values in self.fields.items():
      out[key] = values[indices]
    out['example_mask'] = (np.ones(len(indices), np.float32) if example_mask is None
                           else np.asarray(example_mask, np.float32))
    return out

  def subset(self, indices) -> SequenceDataset:
    """A new dataset holding `indices` (in that order)."""
    indices = np.asarray(indices, np.int64)
    return SequenceDataset({k: v.subset(indices) for k, v in self.sequences.items()},
                           {k: v[indices] for k, v in self.fields.items()}, self.length_key)

"""Fixed-shape numpy batches for a jitted loop: length buckets, deterministic resumable training
order, multi-host shards, and padded evaluation passes.

Batching works on any `BatchSource`: a dataset that knows its examples' lengths and pads a batch
of them (`EncodedDataset` for classification and regression, `SequenceDataset` for token
sequences of any task kind). Every batch is a dict of numpy arrays whose keys are the dataset's
(B = per-host batch size, L = the batch's length bucket); `EncodedDataset` gives
  input_ids       int32 [B, L]   padded with the tokenizer's pad id
  attention_mask  int32 [B, L]   1 on real tokens
  token_type_ids  int32 [B, L]   0 on padding
  labels          int32 [B] (float32 [B] for regression)
and every dataset gives
  example_mask    float32 [B]    1 for real examples, 0 for eval padding rows

Shapes: L is the smallest bucket >= the longest example of the *global* batch, so all hosts pad
the same global batch to the same L, and jit sees at most len(buckets) shapes per batch size
(eval batches, the last one included, are padded to the full batch size).

Training order is a pure function of (seed, epoch): `TrainBatches.epoch_order(epoch)` is the full
[num_batches, global_batch] index table, so `batches(epoch, start=k)` is exactly the tail of
`batches(epoch)` and a run restored at `DataPosition(epoch, k)` sees the same batches as one that
never stopped. Each host takes the contiguous slice [p * B, (p + 1) * B) of each global batch.

Example:
  train = TrainBatches(data, global_batch_size=32, seed=0, sort_window=50)
  for batch, resume_at in train.iterate(DataPosition(epoch=0, batch=0)):
    state, metrics = train_step(state, frozen, batch)
    # checkpoint `resume_at.to_dict()` with the state to resume exactly here
  for batch in eval_batches(valid, global_batch_size=64):
    ...  # weight per-example metrics by batch['example_mask']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from adapters_jax.data.buckets import length_buckets

Batch = dict[str, np.ndarray]


class BatchSource(Protocol):
  """A dataset batching can shuffle, sort by length and pad.

  Attributes:
    lengths: int [N], what length sorting and the buckets go by (e.g. the input's tokens).
    max_length: no example's `lengths` entry is longer.
  """

  lengths: np.ndarray
  max_length: int

  def __len__(self) -> int: ...

  def batch(self, indices: np.ndarray, shape_indices: np.ndarray, buckets: Sequence[int],
            example_mask: np.ndarray | None = None) -> Batch:
    """Rows `indices` padded to the buckets of the longest of `shape_indices` (the global batch)."""
    ...
_Step = tuple[Batch, 'DataPosition']


@dataclasses.dataclass(frozen=True)
class DataPosition:
  """Where the training stream stands: the next batch to read is `batch` of `epoch`."""

  epoch: int = 0
  batch: int = 0

  def to_dict(self) -> dict[str, int]:
    """Plain ints, for a checkpoint's JSON/Orbax metadata."""
    return {'epoch': int(self.epoch), 'batch': int(self.batch)}

  @classmethod
  def from_dict(cls, d) -> DataPosition:
    return cls(epoch=int(d['epoch']), batch=int(d['batch']))


def _host_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must lie in [0, process_count='
                     f'{process_count}).')
  if global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} is not divisible by '
                     f'process_count={process_count}; pick a multiple of the host count.')
  per_host = global_batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


def _check_buckets(data: BatchSource, buckets: Sequence[int] | None) -> tuple[int, ...]:
  if buckets is None:
    return length_buckets(data.max_length)
  buckets = tuple(sorted(int(b) for b in buckets))
  longest = int(data.lengths.max()) if len(data) else 0
  if not buckets or buckets[-1] < longest:
    raise ValueError(f'buckets {buckets} do not cover the longest example ({longest} tokens); '
                     f'add a bucket >= {longest}, e.g. length_buckets({data.max_length}).')
  return buckets


class TrainBatches:
  """Deterministic, resumable training batches: fixed global batch size, last partial dropped.

  Attributes:
    num_batches: global batches per epoch, len(data) // global_batch_size.
    host_batch_size: rows of each batch this host yields (global / process_count).
    buckets: the sequence lengths batches are padded to.
  """

  def __init__(self, data: BatchSource, global_batch_size: int, seed: int, *,
               buckets: Sequence[int] | None = None, process_index: int = 0,
               process_count: int = 1, sort_window: int = 0):
    """Args:
      data: the encoded training split (a `BatchSource`).
      global_batch_size: examples per step across all hosts.
      seed: shuffle seed; the order of epoch e depends only on (seed, e).
      buckets: allowed padded lengths; None: `length_buckets(data.max_length)`.
      process_index, process_count: this host and the host count (`jax.process_index()`,
        `jax.process_count()`); each host yields its contiguous slice of every global batch.
      sort_window: if > 1, examples are sorted by length within windows of this many shuffled
        global batches and the resulting batches are shuffled again, which cuts padding while
        staying a function of (seed, epoch). 0 or 1: plain shuffle.
    """
    if global_batch_size < 1:
      raise ValueError(f'global_batch_size must be positive, got {global_batch_size}.')
    self.data = data
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.buckets = _check_buckets(data, buckets)
    self._slice = _host_slice(global_batch_size, process_index, process_count)
    self.host_batch_size = global_batch_size // process_count
    self.sort_window = int(sort_window)
    self.num_batches = len(data) // global_batch_size
    if self.num_batches == 0:
      raise ValueError(f'The training set has {len(data)} examples, fewer than one global batch '
                       f'({global_batch_size}); lower global_batch_size.')
    self._lengths = data.lengths

  def epoch_order(self, epoch: int) -> np.ndarray:
    """int64 [num_batches, global_batch_size]: example indices of every global batch of `epoch`.

    Deterministic in (seed, epoch); the examples beyond num_batches * global_batch_size in this
    epoch's permutation are skipped (a different few each epoch).
    """
    rng = np.random.default_rng([self.seed, int(epoch)])
    order = rng.permutation(len(self.data))[:self.num_batches * self.global_batch_size]
    table = order.reshape(self.num_batches, self.global_batch_size)
    if self.sort_window > 1:
      window = self.sort_window * self.global_batch_size
      for start in range(0, len(order), window):
        chunk = order[start:start + window]
        # Stable sort keeps the shuffled order among equal lengths.
        order[start:start + window] = chunk[np.argsort(self._lengths[chunk], kind='stable')]
      table = order.reshape(self.num_batches, self.global_batch_size)
      table = table[rng.permutation(self.num_batches)]
    return table

  def _make(self, global_indices: np.ndarray) -> Batch:
    return self.data.batch(global_indices[self._slice], global_indices, self.buckets)

  def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
    """This host's batches of `epoch`, from batch index `start` (same as skipping `start`)."""
    if not 0 <= start <= self.num_batches:
      raise ValueError(f'start={start} outside [0, {self.num_batches}] for epoch {epoch}.')
    table = self.epoch_order(epoch)
    for global_indices in table[start:]:
      yield self._make(global_indices)

  def iterate(self, position: DataPosition = DataPosition()) -> Iterator[_Step]:
    """Endless stream from `position`, yielding (batch, position to resume after this batch).

    A position with batch == num_batches is the same as the start of the next epoch.
    """
    epoch, start = int(position.epoch), int(position.batch)
    while True:
      for offset, batch in enumerate(self.batches(epoch, start)):
        index = start + offset + 1
        resume = (DataPosition(epoch, index) if index < self.num_batches
                  else DataPosition(epoch + 1, 0))
        yield batch, resume
      epoch, start = epoch + 1, 0


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """ceil(num_examples / global_batch_size): batches in one eval pass."""
  return -(-num_examples // global_batch_size)


def eval_batches(data: BatchSource, global_batch_size: int, *,
                 buckets: Sequence[int] | None = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
  """One pass over `data` in order, every example exactly once, all batches full-size.

  The last global batch is filled up with copies of the last example whose example_mask is 0
  (copies of a real example, not empty rows, so no row is fully masked and the model stays
  finite on them). Concatenating `example_mask`-selected rows of the gathered global batches
  gives the dataset order.

  Args:
    data: the encoded evaluation split.
    global_batch_size: examples per step across all hosts.
    buckets: allowed padded lengths; None: `length_buckets(data.max_length)`.
    process_index, process_count: as for `TrainBatches`.

  Yields:
    This host's slice of each global batch (see the module docstring).
  """
  buckets = _check_buckets(data, buckets)
  host = _host_slice(global_batch_size, process_index, process_count)
  n = len(data)
  for start in range(0, n, global_batch_size):
    real = np.arange(start, min(start + global_batch_size, n))
    pad = global_batch_size - len(real)
    indices = np.concatenate([real, np.full(pad, n - 1, np.int64)])
    mask = np.concatenate([np.ones(len(real), np.float32), np.zeros(pad, np.float32)])
    yield data.batch(indices[host], real, buckets, mask[host])

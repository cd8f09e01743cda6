"""Batches of the members of a vmapped group: each member's own batch, stacked on a leading axis.

Members that differ in seed read their training data in different orders, so at one step their
batches hold different examples and may fall in different length buckets. Each member's rows are
taken in its own order (`data.TrainBatches.epoch_order` of its seed), and every member's batch is
padded to the bucket of the longest example among all members' rows (the dataset pads each key its
own way: pad id, mask 0, ...), then stacked: every leaf gets a leading member axis, e.g.
`input_ids` int32 [members, batch, seq]. This works for every `data.BatchSource` (encoder,
text-to-text and causal-LM datasets alike). Padding changes no output of an attention model (the
padded keys are masked), but dropout masks are drawn per padded shape, so with dropout on, a member
whose batch was padded further than its separate run's draws other (equally distributed) masks.
A group of one member reads exactly the batches of its run trained alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from adapters_jax import data
from adapters_jax.data.batching import Batch


def _indices(stream: data.TrainBatches, position: data.DataPosition
             ) -> Iterator[tuple[np.ndarray, data.DataPosition]]:
  """`stream`'s global batches as example indices from `position`, with the position after each
  (as `TrainBatches.iterate` yields them)."""
  epoch, start = int(position.epoch), int(position.batch)
  while True:
    table = stream.epoch_order(epoch)
    for index in range(start, stream.num_batches):
      after = (data.DataPosition(epoch, index + 1) if index + 1 < stream.num_batches
               else data.DataPosition(epoch + 1, 0))
      yield table[index], after
    epoch, start = epoch + 1, 0


def stacked_member_batches(streams: Sequence[data.TrainBatches],
                           positions: Sequence[data.DataPosition]
                           ) -> Iterator[tuple[Batch, list[data.DataPosition]]]:
  """Endless `[members, batch, ...]` batches of members reading `streams[m]` from `positions[m]`,
  with each member's position after the batch (single process: every row is this host's)."""
  dataset = streams[0].data
  for stepped in zip(*(_indices(s, p) for s, p in zip(streams, positions, strict=True)),
                     strict=True):  # endless streams
    everyone = np.concatenate([rows for rows, _ in stepped])
    batches = [dataset.batch(rows, everyone, stream.buckets)
               for (rows, _), stream in zip(stepped, streams, strict=True)]
    yield ({key: np.stack([b[key] for b in batches]) for key in batches[0]},
           [after for _, after in stepped])

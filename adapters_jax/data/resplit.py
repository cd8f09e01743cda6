"""Split schemes: labelled validation and test splits for tasks whose test labels are hidden.

`validation_as_test` (Zhang et al. 2021, "Revisiting Few-sample BERT Fine-tuning"; used by the
Compacter paper): the original validation split becomes the test set, and a new validation set
is made for model selection:
  * a training split of fewer than `SMALL_TASK` (10,000) examples: the original validation split
    is halved, the first half (after a fixed shuffle) validation, the second half test;
  * a larger one: `HELD_OUT` (1,000) training examples (a fixed shuffle) are held out as
    validation, the rest train; the original validation split is the test set.
Tasks with several validation splits (MNLI matched/mismatched) keep each as a test split of the
same suffix (`test_matched`, `test_mismatched`); their new validation comes from training.
The shuffles are seeded by `SEED` and the task's name only, so every run of a table sees the
same splits. (They are not the authors' exact examples, which came from their own shuffle.)

Example:
  task = resplit(load_task('rte'), 'validation_as_test')
  task.spec.validation_splits, task.spec.test_splits   # ('validation',), ('test',)
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from adapters_jax.data.task_registry import Task

SCHEMES = ('', 'validation_as_test')
SMALL_TASK = 10_000
HELD_OUT = 1_000
SEED = 42


def _shuffled(examples: list, name: str, salt: str) -> list:
  order = np.random.default_rng([SEED, zlib.crc32(f'{name}/{salt}'.encode())]).permutation(
      len(examples))
  return [examples[i] for i in order]


def resplit(task: Task, scheme: str) -> Task:
  """`task` with the splits of `scheme` ('' = unchanged; see the module docstring).

  Raises:
    ValueError: an unknown scheme, or a task without the splits the scheme needs.
  """
  if scheme not in SCHEMES:
    raise ValueError(f'Unknown split_scheme {scheme!r}; valid: {list(SCHEMES)} (\'\' keeps the '
                     "task's own splits).")
  if not scheme:
    return task
  spec = task.spec
  originals = [s for s in spec.validation_splits if task.splits.get(s)]
  if spec.train_split not in task.splits or not originals:
    raise ValueError(f'split_scheme={scheme!r} needs the {spec.train_split!r} split and a '
                     f'validation split of task {spec.name!r}; it has {sorted(task.splits)}.')
  train = task.splits[spec.train_split]
  tests = {'test' + s[len('validation'):]: task.splits[s] for s in originals}
  if len(train) < SMALL_TASK:
    source = originals[0]
    shuffled = _shuffled(task.splits[source], spec.name, source)
    half = len(shuffled) // 2
    validation = shuffled[:half]
    tests['test' + source[len('validation'):]] = shuffled[half:]
  else:
    shuffled = _shuffled(train, spec.name, spec.train_split)
    validation, train = shuffled[:HELD_OUT], shuffled[HELD_OUT:]
  new_spec = dataclasses.replace(spec, validation_splits=('validation',),
                                 test_splits=tuple(tests), test_has_labels=True)
  splits = {spec.train_split: train, 'validation': validation, **tests}
  return Task(spec=new_spec, splits=splits, dropped=dict(task.dropped))

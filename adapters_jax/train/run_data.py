"""The data of a run: its task loaded and re-split, checked, and encoded by the run's task kind.

One place for every launcher: a run trained alone and the members of a vmapped group read their
splits through `load_run_task` and `encode_splits`, so `split_scheme`, `max_train_examples` and
`max_eval_examples` mean the same in both.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from adapters_jax import data
from adapters_jax.task_kinds.protocol import TaskKind
from adapters_jax.train.experiment import task_source


def load_run_task(config: ml_collections.ConfigDict) -> data.Task:
  """The configured task with the splits of `config.split_scheme`, checked by `check_splits`."""
  task = data.resplit(data.load_task(task_source(config), data_dir=config.data_dir or None),
                      config.split_scheme)
  check_splits(config, task)
  return task


def check_splits(config: ml_collections.ConfigDict, task: data.Task) -> None:
  """A run needs a training split and a validation split (model selection) with examples."""
  fix = ('add one to the task: for local files --config.local_task.paths.validation=dev.csv '
         '(a file with the same columns)' if config.task == 'local' else
         'check --config.data_dir and the task\'s files')
  spec, loaded = task.spec, sorted(s for s, examples in task.splits.items() if examples)
  if spec.train_split not in loaded:
    raise ValueError(f'Task {spec.name!r} has no {spec.train_split!r} split to train on; {fix}.')
  if not spec.validation_splits or spec.validation_splits[0] not in loaded:
    raise ValueError(f'Task {spec.name!r} has no validation split (it has {loaded}); the run '
                     f'selects its best checkpoint on validation: {fix}.')


def encode_splits(config: ml_collections.ConfigDict, task: data.Task, tokenizer,
                  task_kind: TaskKind) -> dict[str, data.BatchSource]:
  """Every split as the task kind's dataset; `max_train_examples`/`max_eval_examples` > 0 take
  fixed subsets."""
  encoded = {}
  for split in task.spec.splits:
    if split not in task.splits:
      continue
    examples = task[split]
    limit = config.max_train_examples if split == task.spec.train_split else config.max_eval_examples
    if limit > 0 and len(examples) > limit:
      # The same subset for every seed and method: a fixed permutation, independent of config.seed.
      keep = np.sort(np.random.default_rng(1234).permutation(len(examples))[:limit])
      examples = [examples[i] for i in keep]
    encoded[split] = task_kind.encode(examples, tokenizer, config.max_length)
  return encoded


def final_splits_of(spec: data.TaskSpec, encoded: dict[str, data.BatchSource]) -> list[str]:
  """The splits evaluated with the best params after training: validation, and labelled test."""
  splits = [s for s in spec.validation_splits if s in encoded]
  if spec.test_has_labels:
    splits += [s for s in spec.test_splits if s in encoded]
  return splits


def total_steps_of(config: ml_collections.ConfigDict, train_examples: int) -> int:
  """`num_train_steps`, or `num_epochs` of full global batches of the training split."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return int(config.num_epochs * (train_examples // config.batch_size))

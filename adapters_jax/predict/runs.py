"""A trained run as prediction reads it from its workdir: the config, the best checkpoint's record
and the task spec, without the training files.

Example:
  run = read_run('workdirs/quickstart')
  run.config.model, run.spec.label_names, run.best_dir
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any

import ml_collections

from adapters_jax import data
from adapters_jax.checkpoint import save
from adapters_jax.config import saved_configs
from adapters_jax.train.members import BEST_DIR
from adapters_jax.train.run_files import CONFIG_FILE, RESULT_FILE


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """One workdir's run.

  Attributes:
    workdir: the run's folder.
    config: its config (`CONFIG_FILE`).
    record: the JSON record of its best checkpoint (method, base, extra facts such as labels).
    spec: its task.
  """

  workdir: str
  config: ml_collections.ConfigDict
  record: dict[str, Any]
  spec: data.TaskSpec

  @property
  def best_dir(self) -> str:
    """The best checkpoint's folder (adapter-only, `checkpoint.save`)."""
    return os.path.join(self.workdir, BEST_DIR)


def read_run(workdir: str) -> TrainedRun:
  """The run in `workdir`.

  Raises:
    FileNotFoundError: no such folder (naming its closest sibling), or no config (not a workdir of
      `experiments.train`, or a run that never took a step).
    ValueError: a config that is not valid JSON (naming the file and the position).
    checkpoint.CheckpointError: no best checkpoint (the run has not evaluated yet), or a damaged one.
  """
  check_workdir(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: --workdir must be a folder written by '
                            'experiments.train (after its first step).')
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except ValueError as e:  # truncated or edited: JSONDecodeError, UnicodeDecodeError
    raise ValueError(f'{path} is not valid JSON ({e}); restore it from a copy (a finished run\'s '
                     f'{RESULT_FILE} holds its config under "config").') from None
  config = ml_collections.ConfigDict(saved_configs.with_defaults(saved))
  record = save.load_record(os.path.join(workdir, BEST_DIR))
  return TrainedRun(workdir, config, record, spec_from_record(config, record))


def check_workdir(workdir: str) -> None:
  """Raises FileNotFoundError when `workdir` is no folder, naming its closest existing sibling."""
  if os.path.isdir(workdir):
    return
  parent = os.path.dirname(os.path.abspath(workdir))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f'No workdir {workdir} (not even its parent {parent} exists).')
  siblings = [n for n in os.listdir(parent) if os.path.isdir(os.path.join(parent, n))]
  closest = difflib.get_close_matches(os.path.basename(os.path.normpath(workdir)), siblings, n=1)
  hint = f'; did you mean {os.path.join(os.path.dirname(workdir), closest[0])}?' if closest else '.'
  raise FileNotFoundError(f'No workdir {workdir}{hint}')


def spec_from_record(config: ml_collections.ConfigDict, record: dict[str, Any]) -> data.TaskSpec:
  """The task spec of a run: the registered one, or rebuilt from the checkpoint record (local files,
  so that predicting does not need the training files)."""
  if config.task != 'local':
    return data.get_task(config.task)
  label_names = record['extra'].get('label_names')
  metric = 'pearson' if label_names is None else 'accuracy'
  return data.TaskSpec(name=config.local_task.name, text_fields=tuple(config.local_task.text_columns),
                       label_names=tuple(label_names) if label_names else None,
                       metric_names=(metric,), primary_metric=metric, source='local')

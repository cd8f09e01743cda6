"""The runs a program trains: one `Member` per run, its experiment, workdir files and progress.

A run trained alone is a program of one member; a vmapped group has one member per grid point.
Everything a member writes goes through here, so both write the same files: the workdir is
claimed (`config.json`, a fresh or cut-back `metrics.jsonl`) once the first step ran, the best
adapter goes to `best/`, and the result record (`result.json`) is built by `result_record`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from adapters_jax import data
from adapters_jax.checkpoint import save
from adapters_jax.checkpoint.training import TrainCheckpoints
from adapters_jax.splicing import trainable
from adapters_jax.splicing.tree import Params
from adapters_jax.train import run_files
from adapters_jax.train.experiment import Experiment, build_experiment
from adapters_jax.train.metrics_log import MetricsLog

BEST_DIR = 'best'
CHECKPOINT_DIR = 'checkpoints'


@dataclasses.dataclass
class Member:
  """One run of a program and where it stands.

  Attributes:
    config, workdir: the run's config and (absolute) workdir.
    experiment: its built experiment (members of one seed share the model, see `build_members`).
    train_params: its initial trainable leaves (a partial tree, see `trainable.split`).
    schedule: its learning-rate schedule (logged per step).
    checkpoints: its training checkpoints in `workdir/checkpoints`.
    position: where its training data stream stands (saved with each checkpoint).
    best: the best-on-validation record so far (`step`, `metric`, `value`, `metrics`), or None.
    log: its metrics log once the workdir is claimed, else None.
    evaluated_at: the last step its validation split was evaluated at.
    stopped: `stopped_at_step` and `stop_reason` once a non-finite loss stopped it, else None.
    result: its result record once written, else None.
  """

  config: ml_collections.ConfigDict
  workdir: str
  experiment: Experiment
  train_params: Params
  schedule: optax.Schedule | None = None
  checkpoints: TrainCheckpoints | None = None
  position: data.DataPosition = data.DataPosition()
  best: dict[str, Any] | None = None
  log: MetricsLog | None = None
  evaluated_at: int | None = None
  stopped: dict[str, Any] | None = None
  result: dict[str, Any] | None = None

  @property
  def training(self) -> bool:
    """Whether the member still takes steps (neither stopped nor finished)."""
    return self.stopped is None and self.result is None

  def claim(self, resume_step: int | None) -> None:
    """Writes `config.json` and opens the metrics log (cut back to `resume_step`): from here on
    the workdir holds this run."""
    run_files.write_config(self.config, self.workdir)
    self.log = MetricsLog(self.workdir, resume_step=resume_step,
                          tensorboard=self.config.tensorboard)

  def consider_best(self, step: int, metrics: dict[str, float], train_params: Params,
                    frozen: Params) -> bool:
    """Records `metrics` of `step` as the best (and writes `best/`) if they beat it."""
    select = self.config.select_metric or self.experiment.spec.primary_metric
    if self.best is not None and not metrics[select] > self.best['value']:
      return False
    self.best = {'step': step, 'metric': select, 'value': metrics[select], 'metrics': metrics}
    save_best(self.experiment, train_params, frozen, self.workdir, self.best)
    return True


def build_members(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                  spec: data.TaskSpec) -> tuple[list[Member], Params]:
  """Each run's member and the one frozen tree they all share.

  The experiment is built once per seed (members of one seed differ only in learning rate).

  Raises:
    ValueError: the members' frozen params differ (an untrained head initialised per seed).
  """
  members, frozen, by_seed = [], None, {}
  for config, workdir in zip(configs, workdirs, strict=True):
    if config.seed in by_seed:
      experiment = dataclasses.replace(by_seed[config.seed], config=config)
    else:
      experiment = by_seed[config.seed] = build_experiment(config, spec)
    train_params, member_frozen = trainable.split(experiment.params, experiment.mask)
    if frozen is None:
      frozen = member_frozen
    elif not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(frozen),
                                                      jax.tree.leaves(member_frozen), strict=True)):
      raise ValueError('The members\' frozen params differ (an untrained head initialised from '
                       'each seed, with train_head=False): group runs of one seed, or train the '
                       'head.')
    members.append(Member(config=config, workdir=os.path.abspath(workdir), experiment=experiment,
                          train_params=train_params))
  return members, frozen


def save_best(experiment: Experiment, train_params: Params, frozen: Params, workdir: str,
              best: dict[str, Any]) -> None:
  """Writes the trained leaves as `workdir/best` (process 0), with the best record as extra."""
  if jax.process_index() != 0:
    return
  params = trainable.combine(jax.device_get(train_params), jax.device_get(frozen))
  extra = {'task': experiment.spec.name, 'label_names': experiment.spec.label_names,
           'method': experiment.config.method, 'best': best}
  experiment.save_best(os.path.join(workdir, BEST_DIR), params, extra)


def load_best(experiment: Experiment, workdir: str) -> Params:
  """The full params with the best trained leaves of `workdir` written in."""
  leaves = save.load_leaves(os.path.join(workdir, BEST_DIR))
  return save.overwrite_leaves(experiment.params, leaves, what='best checkpoint')


def result_record(member: Member, evaluations: dict[str, dict[str, float]], *, total_steps: int,
                  wall_start: float, examples_per_second: float,
                  extra: dict[str, Any]) -> dict[str, Any]:
  """A member's result record from its best checkpoint's `evaluations` on the final splits."""
  experiment, config, spec = member.experiment, member.config, member.experiment.spec
  counts = experiment.counts()
  return {
      'task': spec.name,
      'method': config.method,
      'model': config.model,
      'config': run_files.as_json(config),
      'trainable_params': counts.trainable,
      'total_params': counts.total,
      'trainable_percent': counts.percent,
      'train_steps': total_steps,
      'best_step': member.best['step'],
      'select_metric': member.best['metric'],
      'validation_metrics': {s: m for s, m in evaluations.items() if s in spec.validation_splits},
      'test_metrics': {s: m for s, m in evaluations.items() if s in spec.test_splits},
      'wall_time_s': time.time() - wall_start,
      'train_examples_per_second': examples_per_second,
      'best_checkpoint': os.path.join(member.workdir, BEST_DIR),
      **extra,
      **(member.stopped or {}),
      **experiment.result_fields,
  }

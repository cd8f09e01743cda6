"""The training loop: `train_and_evaluate(config, workdir)`, for every method and task kind.

Trains the configured adapter (a fusion, or a baseline) on the configured task, evaluates on
validation every `eval_every_steps` and at the end, keeps the best-on-validation trained leaves in
`workdir/best`, checkpoints the trainable state every `checkpoint_every_steps` (resuming from the
latest readable one when rerun on the same workdir), and writes `metrics.jsonl`, TensorBoard events
and, last, `result.json`. The loop only shards, steps, evaluates, logs and checkpoints: the loss,
evaluation outputs and metrics come from the experiment's task kind (`train.tasks`), and an
experiment's regulariser (AdapterFusion's) is part of its training loss.

Determinism: the data order is a function of (seed, epoch), the dropout key of step s is
`fold_in(rng, s)`, and everything in a checkpoint is restored exactly, so a run killed at any point
and resumed ends with the same weights and metrics as one that never stopped.

Workdir rules (`train.run_files`): nothing but an empty `checkpoints/` is written before the first
step, so a failed start leaves the workdir reusable; a finished run (it has `result.json`) rerun
returns its result and writes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from adapters_jax import data
from adapters_jax.checkpoint import save
from adapters_jax.checkpoint.training import TrainCheckpoints
from adapters_jax.splicing import trainable
from adapters_jax.task_kinds.protocol import TaskKind
from adapters_jax.train import distributed, optimizer, placement, run_files
from adapters_jax.train.evaluation import evaluate, make_eval_step
from adapters_jax.train.experiment import Experiment, build_experiment, task_source
from adapters_jax.train.metrics_log import MetricsLog
from adapters_jax.train.progress import Progress
from adapters_jax.train.run_files import CONFIG_FILE, RESULT_FILE  # noqa: F401 (public names)
from adapters_jax.train.step import create_train_state, train_step

BEST_DIR = 'best'
CHECKPOINT_DIR = 'checkpoints'


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate` over `warmup_ratio` of the steps, then linear decay to 0."""
  warmup = int(round(config.warmup_ratio * total_steps))
  return optax.join_schedules([
      optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
      optax.linear_schedule(config.learning_rate, 0.0, max(total_steps - warmup, 1)),
  ], [max(warmup, 1)])


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


def plain_loss(loss: jax.Array, batch) -> jax.Array:
  """The loss as the model computed it (`train_step`'s `loss_fn` for runs without a regularizer)."""
  return loss


def make_step_fns(experiment: Experiment, tx: optax.GradientTransformation):
  """The jitted train step (state donated) and eval step of an experiment.

  Returns:
    `train(state, frozen, batch) -> (state, metrics)` and
    `eval(trainable, frozen, batch) -> {task kind's outputs, example_mask}`.
  """
  train = jax.jit(functools.partial(train_step, apply_fn=experiment.training_loss,
                                    loss_fn=plain_loss, tx=tx), donate_argnums=(0,))
  return train, make_eval_step(experiment.task_kind, experiment.forward)


def _check_finite(loss: float, step: int, checkpoints: TrainCheckpoints) -> None:
  if not math.isfinite(loss):
    raise NonFiniteLossError(
        f'The training loss is {loss} at step {step}; stopping. The last good checkpoint (step '
        f'{checkpoints.latest_step()}) is kept in {checkpoints.directory}; lower the learning rate '
        'or check the data before resuming.')


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and writes everything to `workdir`. Returns the result record.

  Checkpoint managers and the metrics log are closed however the run ends (Orbax's background
  threads otherwise outlive their event loops and print tracebacks at exit).
  """
  with contextlib.ExitStack() as cleanup:
    return _train_and_evaluate(config, workdir, cleanup)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        cleanup: contextlib.ExitStack) -> dict[str, Any]:
  wall_start = time.time()
  if config.distributed:
    distributed.initialize()
  workdir = os.path.abspath(workdir)
  finished = run_files.finished_result(config, workdir)
  if finished is not None:
    _say(f'{workdir} holds a finished run; its result is unchanged.')
    return finished

  task = data.resplit(data.load_task(task_source(config), data_dir=config.data_dir or None),
                     config.split_scheme)
  check_splits(config, task)
  experiment = build_experiment(config, task.spec)
  spec = experiment.spec
  encoded = encode_splits(config, task, experiment.pretrained.tokenizer, experiment.task_kind)
  arrays = placement.Placement.from_config(config)
  mesh = arrays.mesh
  placement.check_batch_size(config.batch_size, mesh)
  placement.check_batch_size(config.eval_batch_size, mesh)
  batches = data.TrainBatches(encoded[spec.train_split], config.batch_size, config.seed,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(), sort_window=config.sort_window)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(config.num_epochs * batches.num_batches))
  counts = experiment.counts()
  _say(f'{config.method} on {spec.name} with {config.model}: {counts}; {total_steps} steps of '
       f'{config.batch_size} on {mesh.size} device(s)')

  schedule = make_schedule(config, total_steps)
  tx = optimizer.adamw(schedule, weight_decay=config.weight_decay, clip_norm=config.clip_norm)
  train_params, frozen = trainable.split(experiment.params, experiment.mask)
  state = create_train_state(train_params, tx, jax.random.PRNGKey(config.seed))
  state, frozen = arrays.place(state, frozen)

  os.makedirs(workdir, exist_ok=True)
  checkpoints = TrainCheckpoints(os.path.join(workdir, CHECKPOINT_DIR), keep=config.keep_checkpoints)
  cleanup.callback(checkpoints.close)
  position, best, resume_step = data.DataPosition(), None, None
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, meta = restored
    position, best = data.DataPosition.from_dict(meta['data_position']), meta['best']
    resume_step = int(jax.device_get(state.step))
    _say(f'Resuming from step {resume_step} in {checkpoints.directory}')
  step_fn, eval_step = make_step_fns(experiment, tx)
  step_fn = arrays.pin_train_step(step_fn, state, frozen)

  select_metric = config.select_metric or spec.primary_metric
  validation_split = spec.validation_splits[0]
  final_splits = final_splits_of(spec, encoded)
  step = int(jax.device_get(state.step))
  progress = Progress(total_steps, step, config.batch_size, config.eval_every_steps,
                      len(encoded[validation_split]), sum(len(encoded[s]) for s in final_splits))

  def run_eval(params, split):
    with progress.paused(), progress.evaluation(split, len(encoded[split])) as done:
      return evaluate(experiment.task_kind, eval_step, params, frozen, encoded[split],
                      config.eval_batch_size, mesh, on_batch=done)

  log = None
  stream = batches.iterate(position)
  pending: list[dict[str, jax.Array]] = []
  while step < total_steps:
    batch, position = next(stream)
    state, metrics = step_fn(state, frozen, placement.shard_batch(batch, mesh))
    step += 1
    pending.append(metrics)
    if log is None:  # The first step ran: from here on the workdir holds this run.
      jax.block_until_ready(metrics)
      with progress.paused():  # TensorBoard's first import takes seconds
        run_files.write_config(config, workdir)
        log = MetricsLog(workdir, resume_step=resume_step, tensorboard=config.tensorboard)
        cleanup.callback(log.close)
    boundary = step == total_steps
    do_eval = boundary or step % config.eval_every_steps == 0
    do_save = boundary or step % config.checkpoint_every_steps == 0
    if boundary or do_eval or do_save or step % config.log_every_steps == 0:
      # Pull the losses since the last log: a non-finite one stops before anything is saved.
      host = jax.device_get(pending)
      pending = []
      progress.mark(step)
      losses = [float(m['loss']) for m in host]
      for loss in losses:
        _check_finite(loss, step, checkpoints)
      log.write(step, 'train', {'loss': float(np.mean(losses)),
                                'grad_norm': float(host[-1]['grad_norm']),
                                'learning_rate': float(schedule(step - 1)),
                                'examples_per_second': progress.examples_per_second()})
      progress.update(step, losses[-1])
    if do_eval:
      val = run_eval(state.params, validation_split)
      log.write(step, validation_split, val)
      if best is None or val[select_metric] > best['value']:
        best = {'step': step, 'metric': select_metric, 'value': val[select_metric], 'metrics': val}
        with progress.paused():
          save_best(experiment, state.params, frozen, workdir, best)
    if do_save:
      with progress.paused():
        checkpoints.save(state, {'data_position': position.to_dict(), 'best': best})
  checkpoints.close()
  if log is None:  # resumed at the last step: only the final evaluation was missing
    run_files.write_config(config, workdir)
    log = MetricsLog(workdir, resume_step=resume_step, tensorboard=config.tensorboard)
    cleanup.callback(log.close)

  best_params, _ = trainable.split(load_best(experiment, workdir), experiment.mask)
  best_params = arrays.params(best_params)
  evaluations = {s: run_eval(best_params, s) for s in final_splits}
  test = {s: m for s, m in evaluations.items() if s in spec.test_splits}
  for split, metrics in test.items():
    log.write(step, split, metrics)
  log.close()
  result = {
      'task': spec.name,
      'method': config.method,
      'model': config.model,
      'config': run_files.as_json(config),
      'trainable_params': counts.trainable,
      'total_params': counts.total,
      'trainable_percent': counts.percent,
      'train_steps': total_steps,
      'best_step': best['step'],
      'select_metric': best['metric'],
      'validation_metrics': {s: m for s, m in evaluations.items() if s in spec.validation_splits},
      'test_metrics': test,
      'wall_time_s': time.time() - wall_start,
      'train_examples_per_second': progress.overall_examples_per_second(),
      'best_checkpoint': os.path.join(workdir, BEST_DIR),
      **experiment.result_fields,
  }
  if experiment.report is not None and jax.process_index() == 0:
    result.update(experiment.report(trainable.combine(jax.device_get(best_params),
                                                      jax.device_get(frozen)),
                                    encoded[validation_split], workdir))
  run_files.write_result(result, workdir)
  return result


def final_splits_of(spec: data.TaskSpec, encoded: dict[str, data.BatchSource]) -> list[str]:
  """The splits evaluated with the best params after training: validation, and labelled test."""
  splits = [s for s in spec.validation_splits if s in encoded]
  if spec.test_has_labels:
    splits += [s for s in spec.test_splits if s in encoded]
  return splits


def _say(line: str) -> None:
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


def save_best(experiment: Experiment, train_params, frozen, workdir: str, best: dict) -> None:
  if jax.process_index() != 0:
    return
  params = trainable.combine(jax.device_get(train_params), jax.device_get(frozen))
  extra = {'task': experiment.spec.name, 'label_names': experiment.spec.label_names,
           'method': experiment.config.method, 'best': best}
  experiment.save_best(os.path.join(workdir, BEST_DIR), params, extra)


def load_best(experiment: Experiment, workdir: str) -> dict[str, Any]:
  """The full params with the best trained leaves of `workdir` written in."""
  leaves = save.load_leaves(os.path.join(workdir, BEST_DIR))
  return save.overwrite_leaves(experiment.params, leaves, what='best checkpoint')

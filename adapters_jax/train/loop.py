"""The training loop: `train_and_evaluate(config, workdir)`.

Trains the configured adapter (or baseline) on the configured task, evaluates on validation every
`eval_every_steps` and at the end, keeps the best-on-validation trained leaves in `workdir/best`,
checkpoints the trainable state every `checkpoint_every_steps` (resuming from the latest one when
rerun on the same workdir), and writes `metrics.jsonl`, TensorBoard events and `result.json`.

Determinism: the data order is a function of (seed, epoch), the dropout key of step s is
`fold_in(rng, s)`, and everything in a checkpoint is restored exactly, so a run killed at any point
and resumed ends with the same weights and metrics as one that never stopped.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from adapters_jax import checkpoint, data, trainable
from adapters_jax.train import sharding
from adapters_jax.train.checkpointing import TrainCheckpoints
from adapters_jax.train.experiment import Experiment, build_experiment, task_source
from adapters_jax.train.metrics_log import MetricsLog, Progress
from adapters_jax.train.step import (
    classification_loss,
    create_train_state,
    regression_loss,
    train_step,
)

BEST_DIR = 'best'
CHECKPOINT_DIR = 'checkpoints'
CONFIG_FILE = 'config.json'
RESULT_FILE = 'result.json'


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate` over `warmup_ratio` of the steps, then linear decay to 0."""
  warmup = int(round(config.warmup_ratio * total_steps))
  return optax.join_schedules([
      optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
      optax.linear_schedule(config.learning_rate, 0.0, max(total_steps - warmup, 1)),
  ], [max(warmup, 1)])


def loss_fn_for(spec: data.TaskSpec):
  def loss_fn(output, batch):
    weights = batch['example_mask']
    if spec.is_regression:
      return regression_loss(output, batch['labels'], weights)
    return classification_loss(output, batch['labels'], weights)
  return loss_fn


def encode_splits(config: ml_collections.ConfigDict, task: data.Task,
                  tokenizer) -> dict[str, data.EncodedDataset]:
  """Tokenises every split; `max_train_examples`/`max_eval_examples` > 0 take fixed subsets."""
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
    encoded[split] = data.encode(examples, tokenizer, config.max_length)
  return encoded


def make_step_fns(experiment: Experiment, tx: optax.GradientTransformation):
  """The jitted train step (state donated) and eval step of an experiment.

  Returns:
    `train(state, frozen, batch) -> (state, metrics)` and `eval(trainable, frozen, batch) -> logits`.
  """
  apply_train = lambda p, batch, rng: experiment.logits(p, batch, deterministic=False, rng=rng)
  train = jax.jit(functools.partial(train_step, apply_fn=apply_train,
                                    loss_fn=loss_fn_for(experiment.spec), tx=tx),
                  donate_argnums=(0,))

  @jax.jit
  def evaluate_batch(train_params, frozen, batch):
    return experiment.logits(trainable.combine(train_params, frozen), batch, deterministic=True)

  return train, evaluate_batch


def evaluate(experiment: Experiment, eval_step, train_params, frozen, dataset: data.EncodedDataset,
             mesh) -> dict[str, float]:
  """GLUE metrics of the model on one encoded split (every example exactly once)."""
  outputs, labels, masks = [], [], []
  for batch in data.eval_batches(dataset, experiment.config.eval_batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count()):
    logits = eval_step(train_params, frozen, sharding.shard_batch(batch, mesh))
    outputs.append(np.asarray(sharding.gather(logits), np.float32))
    labels.append(np.asarray(sharding.gather(batch['labels'])) if jax.process_count() > 1
                  else batch['labels'])
    masks.append(np.asarray(sharding.gather(batch['example_mask'])) if jax.process_count() > 1
                 else batch['example_mask'])
  return data.compute_metrics(experiment.spec, np.concatenate(outputs), np.concatenate(labels),
                              np.concatenate(masks))


def _check_finite(loss: float, step: int, checkpoints: TrainCheckpoints) -> None:
  if not math.isfinite(loss):
    raise NonFiniteLossError(
        f'The training loss is {loss} at step {step}; stopping. The last good checkpoint (step '
        f'{checkpoints.latest_step()}) is kept in {checkpoints.directory}; lower the learning rate '
        'or check the data before resuming.')


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the run's config; a rerun on the same workdir must use the same config."""
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differ:
      raise ValueError(f'{workdir} holds a run with another config (fields {differ} differ); '
                       'use a new --workdir, or the same config to resume.')
  elif jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(current, f, indent=2, sort_keys=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and writes everything to `workdir`. Returns the result record."""
  wall_start = time.time()
  if config.distributed:
    jax.distributed.initialize()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  _write_config(config, workdir)

  task = data.load_task(task_source(config), data_dir=config.data_dir or None)
  experiment = build_experiment(config, task.spec)
  spec = experiment.spec
  encoded = encode_splits(config, task, experiment.pretrained.tokenizer)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh)
  batches = data.TrainBatches(encoded[spec.train_split], config.batch_size, config.seed,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(), sort_window=config.sort_window)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(config.num_epochs * batches.num_batches))
  counts = experiment.counts()
  if jax.process_index() == 0:
    print(f'{config.method} on {spec.name} with {config.model}: {counts}; {total_steps} steps of '
          f'{config.batch_size} on {mesh.size} device(s)', file=sys.stderr, flush=True)

  schedule = make_schedule(config, total_steps)
  tx = trainable.adamw(schedule, weight_decay=config.weight_decay, clip_norm=config.clip_norm)
  train_params, frozen = trainable.split(experiment.params, experiment.mask)
  state = create_train_state(train_params, tx, jax.random.PRNGKey(config.seed))
  state, frozen = sharding.replicate((state, frozen), mesh)

  checkpoints = TrainCheckpoints(os.path.join(workdir, CHECKPOINT_DIR), keep=config.keep_checkpoints)
  position, best = data.DataPosition(), None
  latest = checkpoints.latest_step()
  if latest is not None:
    state, meta = checkpoints.restore(latest, state)
    position, best = data.DataPosition.from_dict(meta['data_position']), meta['best']
    if jax.process_index() == 0:
      print(f'Resuming from step {latest} in {checkpoints.directory}', file=sys.stderr, flush=True)
  log = MetricsLog(workdir, resume_step=latest, tensorboard=config.tensorboard)

  step_fn, eval_step = make_step_fns(experiment, tx)

  select_metric = config.select_metric or spec.primary_metric
  validation_split = spec.validation_splits[0]
  step = int(jax.device_get(state.step))
  progress = Progress(total_steps, step, config.batch_size)
  stream = batches.iterate(position)
  pending: list[dict[str, jax.Array]] = []
  while step < total_steps:
    batch, position = next(stream)
    state, metrics = step_fn(state, frozen, sharding.shard_batch(batch, mesh))
    step += 1
    pending.append(metrics)
    boundary = step == total_steps
    do_eval = boundary or step % config.eval_every_steps == 0
    do_save = boundary or step % config.checkpoint_every_steps == 0
    if boundary or do_eval or do_save or step % config.log_every_steps == 0:
      # Pull the losses since the last log: a non-finite one stops before anything is saved.
      host = jax.device_get(pending)
      pending = []
      losses = [float(m['loss']) for m in host]
      for loss in losses:
        _check_finite(loss, step, checkpoints)
      log.write(step, 'train', {'loss': float(np.mean(losses)),
                                'grad_norm': float(host[-1]['grad_norm']),
                                'learning_rate': float(schedule(step - 1))})
      progress.update(step, losses[-1])
    if do_eval:
      val = evaluate(experiment, eval_step, state.params, frozen, encoded[validation_split], mesh)
      log.write(step, validation_split, val)
      if best is None or val[select_metric] > best['value']:
        best = {'step': step, 'metric': select_metric, 'value': val[select_metric], 'metrics': val}
        _save_best(experiment, state.params, frozen, workdir, best)
    if do_save:
      checkpoints.save(state, {'data_position': position.to_dict(), 'best': best})
  examples_per_second = progress.examples_per_second(step)
  checkpoints.close()

  result = _final_result(experiment, encoded, eval_step, frozen, mesh, workdir, best, counts,
                         total_steps, examples_per_second, wall_start)
  for split, metrics in result['test_metrics'].items():
    log.write(step, split, metrics)
  log.close()
  return result


def _save_best(experiment: Experiment, train_params, frozen, workdir: str, best: dict) -> None:
  if jax.process_index() != 0:
    return
  params = trainable.combine(jax.device_get(train_params), jax.device_get(frozen))
  extra = {'task': experiment.spec.name, 'label_names': experiment.spec.label_names,
           'method': experiment.config.method, 'best': best}
  directory = os.path.join(workdir, BEST_DIR)
  if experiment.adapter_name is None:
    checkpoint.save_trained(directory, params, experiment.mask,
                            base_name=experiment.config.model, extra=extra)
  else:
    checkpoint.save_adapter(directory, experiment.spliced, params, experiment.adapter_name,
                            mask=experiment.mask, base_name=experiment.config.model, extra=extra)


def load_best(experiment: Experiment, workdir: str) -> dict[str, Any]:
  """The full params with the best trained leaves of `workdir` written in."""
  leaves = checkpoint.load_leaves(os.path.join(workdir, BEST_DIR))
  return checkpoint.overwrite_leaves(experiment.params, leaves, what='best checkpoint')


def _final_result(experiment, encoded, eval_step, frozen, mesh, workdir, best, counts, total_steps,
                  examples_per_second, wall_start) -> dict[str, Any]:
  spec, config = experiment.spec, experiment.config
  best_params, _ = trainable.split(load_best(experiment, workdir), experiment.mask)
  best_params = sharding.replicate(best_params, mesh)
  validation = {s: evaluate(experiment, eval_step, best_params, frozen, encoded[s], mesh)
                for s in spec.validation_splits if s in encoded}
  test = {}
  if spec.test_has_labels:
    test = {s: evaluate(experiment, eval_step, best_params, frozen, encoded[s], mesh)
            for s in spec.test_splits if s in encoded}
  result = {
      'task': spec.name,
      'method': config.method,
      'model': config.model,
      'config': json.loads(config.to_json_best_effort()),
      'trainable_params': counts.trainable,
      'total_params': counts.total,
      'trainable_percent': counts.percent,
      'train_steps': total_steps,
      'best_step': best['step'],
      'select_metric': best['metric'],
      'validation_metrics': validation,
      'test_metrics': test,
      'wall_time_s': time.time() - wall_start,
      'train_examples_per_second': examples_per_second,
      'best_checkpoint': os.path.join(workdir, BEST_DIR),
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULT_FILE), 'w') as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result


"""Training AdapterFusion: `train_and_evaluate(config, workdir)` for `config.method == 'fusion'`.

Loads the base with a fresh head for the target task, restores the frozen task adapters named by
`config.method_options.adapter_dirs` (their heads are dropped), splices a fusion layer over them
and trains only the fusion layers and the head, with the task loss plus
`regularization * ||V - I||^2`. Evaluates on validation every `eval_every_steps`, keeps the best
fusion in `workdir/best` (`fusion.save_fusion`: it records the fused adapters), then writes
`result.json` (the same fields as `train.loop`), `metrics.jsonl` and `fusion_attention.png` (mean
attention per site on validation examples).

Built from the training loop's parts (`loop.encode_splits`, `loop.evaluate`, `train_step`, ...).
Unlike `loop.train_and_evaluate` a killed fusion run restarts from step 0 (no mid-run checkpoints).

`config.method_options`: `adapter_dirs` (adapter checkpoints), `temperature`, `dropout`,
`regularization` (see `methods.fusion.FusionConfig`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from adapters_jax import checkpoint, data, models, trainable
from adapters_jax.checkpoint import restore_adapters
from adapters_jax.fusion import (
  add_fusion,
  fusion_attentions,
  fusion_regularization,
  fusion_rules,
  plot_fusion_attention,
  restore_fusion,
  save_fusion,
)
from adapters_jax.methods.fusion import FusionConfig
from adapters_jax.train import loop, sharding
from adapters_jax.train.experiment import Experiment, task_source
from adapters_jax.train.metrics_log import MetricsLog, Progress
from adapters_jax.train.step import create_train_state, train_step

ATTENTION_PLOT = 'fusion_attention.png'


def _sample():
  sample = jnp.ones((2, 16), jnp.int32)
  return (sample, sample, jnp.zeros_like(sample)), {'deterministic': True}


def build_fusion_experiment(config: ml_collections.ConfigDict, spec: data.TaskSpec,
                            fusion_dir: str | None = None) -> Experiment:
  """Base + fresh head for `spec`, the frozen adapters of `adapter_dirs`, a new fusion over them
  (or the one saved in `fusion_dir`). `experiment.adapter_name` is the fusion's name."""
  if config.method != 'fusion':
    raise ValueError(f"build_fusion_experiment needs config.method='fusion', got {config.method!r}.")
  options = config.method_options
  if not options.adapter_dirs:
    raise ValueError('config.method_options.adapter_dirs names no adapter checkpoint to fuse.')
  pretrained = models.load_pretrained(
      config.model, head='classification', num_labels=spec.num_labels, dtype=config.dtype,
      remat=config.remat, scan_layers=config.scan_layers, seed=config.seed,
      config_overrides=dict(config.model_overrides))
  args, kwargs = _sample()
  spliced, params, restored = restore_adapters(list(options.adapter_dirs), pretrained.model,
                                               pretrained.params, *args, **kwargs)
  names = tuple(restored)
  if fusion_dir is not None:
    spliced, params = restore_fusion(fusion_dir, spliced, params)
    name = checkpoint.load_record(fusion_dir)['adapter']
  else:
    fusion_config = FusionConfig(adapters=names, temperature=float(options.temperature),
                                 dropout=float(options.dropout),
                                 regularization=float(options.regularization))
    spliced, params = add_fusion(spliced, params, names, jax.random.PRNGKey(config.seed + 1),
                                 fusion_config)
    name = ','.join(names)
  mask = trainable.make_mask(params, fusion_rules(spliced, name, train_head=config.train_head))
  return Experiment(config=config, pretrained=pretrained, spec=spec, spliced=spliced,
                    params=params, mask=mask, adapter_name=name)


def make_fusion_step_fns(experiment: Experiment, tx):
  """Train step with the value regulariser in the loss, and the eval step (`loop.make_step_fns`)."""
  task_loss = loop.loss_fn_for(experiment.spec)
  name = experiment.adapter_name

  def apply_fn(params, batch, rng):
    logits = experiment.logits(params, batch, deterministic=False, rng=rng)
    return logits, fusion_regularization(experiment.spliced, params, name)

  def loss_fn(output, batch):
    logits, regularizer = output
    return task_loss(logits, batch) + regularizer

  train = jax.jit(functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx),
                  donate_argnums=(0,))
  _, evaluate_batch = loop.make_step_fns(experiment, tx)
  return train, evaluate_batch


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the fusion layers (and head) on the configured task. Returns the result record."""
  wall_start = time.time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, loop.CONFIG_FILE), 'w') as f:
    json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)
  task = data.load_task(task_source(config), data_dir=config.data_dir or None)
  experiment = build_fusion_experiment(config, task.spec)
  spec, name = experiment.spec, experiment.adapter_name
  encoded = loop.encode_splits(config, task, experiment.pretrained.tokenizer)
  mesh = sharding.make_mesh()
  batches = data.TrainBatches(encoded[spec.train_split], config.batch_size, config.seed,
                              sort_window=config.sort_window)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(config.num_epochs * batches.num_batches))
  counts = experiment.counts()
  logging.info('fusion %s on %s: %s', name, spec.name, counts)
  schedule = loop.make_schedule(config, total_steps)
  tx = trainable.adamw(schedule, weight_decay=config.weight_decay, clip_norm=config.clip_norm)
  train_params, frozen = trainable.split(experiment.params, experiment.mask)
  state = create_train_state(train_params, tx, jax.random.PRNGKey(config.seed))
  state, frozen = sharding.replicate((state, frozen), mesh)
  step_fn, eval_step = make_fusion_step_fns(experiment, tx)
  log = MetricsLog(workdir, resume_step=None, tensorboard=config.tensorboard)
  select_metric = config.select_metric or spec.primary_metric
  validation_split = spec.validation_splits[0]
  best_dir = os.path.join(workdir, loop.BEST_DIR)
  progress = Progress(total_steps, 0, config.batch_size)
  stream = batches.iterate(data.DataPosition())
  best, pending = None, []
  for step in range(1, total_steps + 1):
    batch, _ = next(stream)
    state, metrics = step_fn(state, frozen, sharding.shard_batch(batch, mesh))
    pending.append(metrics)
    boundary = step == total_steps
    if boundary or step % config.log_every_steps == 0 or step % config.eval_every_steps == 0:
      losses = [float(m['loss']) for m in jax.device_get(pending)]
      pending = []
      if not all(np.isfinite(losses)):
        raise loop.NonFiniteLossError(f'The fusion training loss is {losses[-1]} at step {step}; '
                                      'lower the learning rate.')
      log.write(step, 'train', {'loss': float(np.mean(losses)),
                                'learning_rate': float(schedule(step - 1))})
      progress.update(step, losses[-1])
    if boundary or step % config.eval_every_steps == 0:
      val = loop.evaluate(experiment, eval_step, state.params, frozen, encoded[validation_split],
                          mesh)
      log.write(step, validation_split, val)
      if best is None or val[select_metric] > best['value']:
        best = {'step': step, 'metric': select_metric, 'value': val[select_metric], 'metrics': val}
        params = trainable.combine(jax.device_get(state.params), jax.device_get(frozen))
        save_fusion(best_dir, experiment.spliced, params, name, mask=experiment.mask,
                    base_name=config.model,
                    extra={'task': spec.name, 'label_names': spec.label_names,
                           'method': 'fusion', 'best': best})
  examples_per_second = progress.examples_per_second(total_steps)

  best_params = checkpoint.overwrite_leaves(experiment.params, checkpoint.load_leaves(best_dir))
  best_train, _ = trainable.split(best_params, experiment.mask)
  evaluations = {s: loop.evaluate(experiment, eval_step, best_train, frozen, encoded[s], mesh)
                 for s in spec.validation_splits + (spec.test_splits if spec.test_has_labels
                                                    else ()) if s in encoded}
  for split, metrics in evaluations.items():
    if split in spec.test_splits:
      log.write(total_steps, split, metrics)
  log.close()
  plot = _attention_plot(experiment, best_params, encoded[validation_split],
                         os.path.join(workdir, ATTENTION_PLOT))
  result = {
      'task': spec.name, 'method': 'fusion', 'model': config.model,
      'config': json.loads(config.to_json_best_effort()),
      'fused_adapters': list(experiment.spliced.adapter(name).method.adapters),
      'trainable_params': counts.trainable, 'total_params': counts.total,
      'trainable_percent': counts.percent, 'train_steps': total_steps,
      'best_step': best['step'], 'select_metric': best['metric'],
      'validation_metrics': {s: m for s, m in evaluations.items() if s in spec.validation_splits},
      'test_metrics': {s: m for s, m in evaluations.items() if s in spec.test_splits},
      'wall_time_s': time.time() - wall_start,
      'train_examples_per_second': examples_per_second,
      'best_checkpoint': best_dir, 'attention_plot': plot,
  }
  with open(os.path.join(workdir, loop.RESULT_FILE), 'w') as f:
    json.dump(result, f, indent=2, sort_keys=True)
  return result


def _attention_plot(experiment: Experiment, params, dataset: data.EncodedDataset, path: str,
                    max_examples: int = 64) -> str:
  """Mean fusion attention per site over up to `max_examples` validation examples, as a PNG."""
  batch = next(iter(data.eval_batches(dataset.subset(range(min(len(dataset), max_examples))),
                                      max_examples)))
  _, state = experiment.spliced.apply(
      params, batch['input_ids'], batch['attention_mask'], batch['token_type_ids'],
      deterministic=True, active=experiment.adapter_name, mutable=['intermediates'])
  attentions = fusion_attentions(state['intermediates'], experiment.adapter_name)
  fused = experiment.spliced.adapter(experiment.adapter_name).method.adapters
  mask = batch['attention_mask'] * batch['example_mask'][:, None]
  return plot_fusion_attention(attentions, path, adapters=fused, mask=mask,
                               title=f'AdapterFusion on {experiment.spec.name}')

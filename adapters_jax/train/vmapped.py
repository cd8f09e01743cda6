"""A grid row as one program: runs that differ only in `VMAP_FIELDS` train together under `vmap`.

    results = train_group([config_lr3e4_seed0, config_lr1e3_seed1], [workdir_a, workdir_b])

The members' trainable params and optimizer states are stacked on a leading member axis; the frozen
base is one argument shared by all (never copied per member). Each member reads exactly the
batches its separate run reads (its own seed's order, `[members, batch, seq]` gathered on the
host), follows its own learning-rate schedule (the config's schedule with peak 1, scaled by the
member's rate inside the program), and writes what a separate run writes to its own workdir:
`config.json`, `metrics.jsonl`, training checkpoints, `best/` and `result.json`. A member's workdir
is therefore also an ordinary run: `experiments.train` on it resumes or reports it, and
`experiments.report` reads it unchanged.

Fields that may differ inside a group: `learning_rate` and `seed` (the seed sets the data order,
the head and adapter initialisation and the dropout stream). Everything else must be equal;
`group_key` is what the sweep launcher groups runs by.

A member whose training loss or gradient norm becomes non-finite stops alone: the update of that
step is not applied (its state stays the one after its last finite step), it is evaluated there,
its final evaluation runs on its best checkpoint and its result.json records `stopped_at_step`
and `stop_reason`; the others train on. A separate run stops with an error instead.

Killed and rerun, a group resumes every unfinished member from the newest checkpoint step they
all have (newer steps of some members are removed), so it ends as one that never stopped.
Single process; the group runs on the default device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adapters_jax import data
from adapters_jax.checkpoint.training import TrainCheckpoints
from adapters_jax.splicing import trainable
from adapters_jax.task_kinds.protocol import EXAMPLE_MASK, Classification, Regression
from adapters_jax.train import optimizer, run_files
from adapters_jax.train.evaluation import make_eval_step
from adapters_jax.train.experiment import Experiment, build_experiment, task_source
from adapters_jax.train.loop import (
  BEST_DIR,
  CHECKPOINT_DIR,
  check_splits,
  encode_splits,
  final_splits_of,
  load_best,
  make_schedule,
  plain_loss,
  save_best,
)
from adapters_jax.train.member_batches import stack_member_batches
from adapters_jax.train.metrics_log import MetricsLog
from adapters_jax.train.progress import Progress
from adapters_jax.train.step import TrainState, create_train_state, train_step

VMAP_FIELDS = ('learning_rate', 'seed')


def group_key(config: dict[str, Any]) -> str:
  """The JSON of a run's config without `VMAP_FIELDS`: runs with equal keys share one program."""
  return json.dumps({k: v for k, v in config.items() if k not in VMAP_FIELDS}, sort_keys=True,
                    default=repr)


def check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises ValueError unless the configs differ only in `VMAP_FIELDS` (names the others)."""
  first = run_files.as_json(configs[0])
  for config in configs[1:]:
    other = run_files.as_json(config)
    differ = sorted(k for k in set(first) | set(other)
                    if k not in VMAP_FIELDS and first.get(k) != other.get(k))
    if differ:
      raise ValueError(f'Members of a vmapped group may differ only in {list(VMAP_FIELDS)}; these '
                       f'differ too: {differ}. Train them in separate groups.')
  if configs[0].distributed:
    raise ValueError('A vmapped group runs in one process; set --config.distributed=False.')


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _member(tree: Any, index: int) -> Any:
  return jax.tree.map(lambda leaf: leaf[index], tree)


def _say(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def make_group_step(experiment: Experiment, config: ml_collections.ConfigDict, total_steps: int):
  """The jitted, vmapped train step of a group (stacked state donated).

  Returns:
    `step(state [M], alive bool [M], learning_rate float32 [M], frozen, batch [M, B, ...])` ->
    `(state, alive, metrics)`: a member not alive, or whose loss or gradient norm is non-finite at
    this step, keeps its state and is not alive afterwards.
  """
  unit_config = config.copy_and_resolve_references()
  unit_config.learning_rate = 1.0
  unit = make_schedule(unit_config, total_steps)

  def member_step(state: TrainState, alive, learning_rate, frozen, batch):
    tx = optimizer.adamw(lambda count: learning_rate * unit(count),
                         weight_decay=config.weight_decay, clip_norm=config.clip_norm)
    new_state, metrics = train_step(state, frozen, batch, apply_fn=experiment.training_loss,
                                    loss_fn=plain_loss, tx=tx)
    ok = alive & jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    return state, ok, metrics

  return jax.jit(jax.vmap(member_step, in_axes=(0, 0, 0, None, 0)), donate_argnums=(0,))


def evaluate_members(experiment: Experiment, eval_step, stacked_params, frozen,
                     dataset: data.BatchSource, batch_size: int) -> list[dict[str, float]]:
  """The task kind's metrics of every member on one split (one vmapped pass over the batches)."""
  gathered = []
  for batch in data.eval_batches(dataset, batch_size):
    gathered.append(jax.device_get(eval_step(stacked_params, frozen, batch)))
  merged = {k: np.concatenate([g[k] for g in gathered], axis=1) for k in gathered[0]}  # [M, N, ...]
  keep = merged.pop(EXAMPLE_MASK)[0].astype(bool)  # the same rows for every member
  members = jax.tree.leaves(stacked_params)[0].shape[0]
  return [experiment.task_kind.metrics({k: v[m][keep] for k, v in merged.items()})
          for m in range(members)]


def train_group(configs: Sequence[ml_collections.ConfigDict],
                workdirs: Sequence[str]) -> list[dict[str, Any]]:
  """Trains the runs `configs[i]` -> `workdirs[i]` as one program; returns their result records.

  Members whose workdir already holds a finished run are reported, not trained.

  Raises:
    ValueError: the configs differ in more than `VMAP_FIELDS`, or (with `train_head=False`)
      their seeds give the frozen params different heads.
  """
  if len(configs) != len(workdirs) or not configs:
    raise ValueError(f'{len(configs)} configs for {len(workdirs)} workdirs: give one workdir each.')
  check_group(configs)
  workdirs = [os.path.abspath(w) for w in workdirs]
  results: list[dict[str, Any] | None] = [run_files.finished_result(c, w)
                                          for c, w in zip(configs, workdirs, strict=True)]
  todo = [i for i, r in enumerate(results) if r is None]
  if todo:
    with contextlib.ExitStack() as cleanup:
      trained = _train_members([configs[i] for i in todo], [workdirs[i] for i in todo], cleanup)
    for i, result in zip(todo, trained, strict=True):
      results[i] = result
  return results


def _build_members(configs, spec):
  """Each member's experiment (built once per seed: members of one seed differ only in learning
  rate); their trainable params; the one frozen tree they share."""
  experiments, train_parts, frozen, by_seed = [], [], None, {}
  for config in configs:
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
    experiments.append(experiment)
    train_parts.append(train_params)
  return experiments, train_parts, frozen


def _resume_step(checkpoints: Sequence[TrainCheckpoints]) -> int | None:
  """The newest step every member has; newer steps of some members are removed."""
  steps = [set(c.manager.all_steps()) for c in checkpoints]
  common = set.intersection(*steps) if steps else set()
  latest = max(common) if common else None
  for c, member_steps in zip(checkpoints, steps, strict=True):
    for step in sorted(member_steps):
      if latest is None or step > latest:
        c.manager.delete(step)
    c.manager.reload()
  return latest


def _train_members(configs, workdirs, cleanup: contextlib.ExitStack) -> list[dict[str, Any]]:
  wall_start = time.time()
  config = configs[0]
  members = len(configs)
  task = data.load_task(task_source(config), data_dir=config.data_dir or None)
  check_splits(config, task)
  experiments, train_parts, frozen = _build_members(configs, task.spec)
  experiment, spec = experiments[0], experiments[0].spec
  if not isinstance(experiment.task_kind, Classification | Regression):
    raise ValueError(f'A vmapped group trains classification or regression runs; {spec.name!r} '
                     f'is a {type(experiment.task_kind).__name__} task: use --launcher=local.')
  encoded = encode_splits(config, task, experiment.pretrained.tokenizer, experiment.task_kind)
  train_data = encoded[spec.train_split]
  streams = [data.TrainBatches(train_data, c.batch_size, c.seed, sort_window=c.sort_window)
             for c in configs]
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(config.num_epochs * streams[0].num_batches))
  counts = experiment.counts()
  _say(f'{config.method} on {spec.name} with {config.model}: {counts}; {members} members '
       f'(learning rates {[c.learning_rate for c in configs]}, seeds {[c.seed for c in configs]}) '
       f'as one program, {total_steps} steps of {config.batch_size}')
  schedules = [make_schedule(c, total_steps) for c in configs]
  states = [create_train_state(p, optimizer.adamw(s, weight_decay=c.weight_decay,
                                                  clip_norm=c.clip_norm), jax.random.PRNGKey(c.seed))
            for p, s, c in zip(train_parts, schedules, configs, strict=True)]

  checkpoints = []
  for workdir in workdirs:
    os.makedirs(workdir, exist_ok=True)
    checkpoints.append(TrainCheckpoints(os.path.join(workdir, CHECKPOINT_DIR),
                                        keep=config.keep_checkpoints))
    cleanup.callback(checkpoints[-1].close)
  positions, bests = [data.DataPosition()] * members, [None] * members
  resume_step = _resume_step(checkpoints)
  if resume_step is not None:
    for m in range(members):
      states[m], meta = checkpoints[m].restore(resume_step, states[m])
      positions[m] = data.DataPosition.from_dict(meta['data_position'])
      bests[m] = meta['best']
    _say(f'Resuming {members} members from step {resume_step}')
  state = _stack(states)
  del states, train_parts
  frozen = jax.device_put(frozen)
  alive = np.ones(members, bool)
  learning_rates = jnp.asarray([c.learning_rate for c in configs], jnp.float32)
  step_fn = make_group_step(experiment, config, total_steps)
  eval_step = jax.jit(jax.vmap(make_eval_step(experiment.task_kind, experiment.forward),
                               in_axes=(0, None, None)))

  select_metric = config.select_metric or spec.primary_metric
  validation_split = spec.validation_splits[0]
  final_splits = final_splits_of(spec, encoded)
  step = int(jax.device_get(state.step[0]))
  progress = Progress(total_steps, step, config.batch_size, config.eval_every_steps,
                      len(encoded[validation_split]), sum(len(encoded[s]) for s in final_splits))
  results: list[dict[str, Any] | None] = [None] * members
  stopped: dict[int, dict[str, Any]] = {}
  evaluated_at: list[set[int]] = [set() for _ in range(members)]

  def run_eval(stacked_params, split):
    count = jax.tree.leaves(stacked_params)[0].shape[0]
    with progress.paused(), progress.evaluation(split, len(encoded[split]) * count):
      return evaluate_members(experiment, eval_step, stacked_params, frozen, encoded[split],
                              config.eval_batch_size)

  def consider_best(m, at_step, metrics):
    if bests[m] is None or metrics[select_metric] > bests[m]['value']:
      bests[m] = {'step': at_step, 'metric': select_metric, 'value': metrics[select_metric],
                  'metrics': metrics}
      with progress.paused():
        save_best(experiment, _member(state.params, m), frozen, workdirs[m], bests[m])

  def finish(finished, at_step):
    """Evaluates the best params of members `finished` on the final splits in one vmapped pass
    (padded to all members' rows, so that the eval step is not compiled again), writes results."""
    best_params = [trainable.split(load_best(experiments[m], workdirs[m]), experiments[m].mask)[0]
                   for m in finished]
    stacked = _stack(best_params + [best_params[0]] * (members - len(finished)))
    evaluations = {s: run_eval(stacked, s) for s in final_splits}
    for i, m in enumerate(finished):
      results[m] = _final_result(experiments[m], workdirs[m], logs[m], at_step, best_params[i],
                                 frozen, encoded, {s: e[i] for s, e in evaluations.items()},
                                 bests[m], total_steps, wall_start, progress, members)
      if m in stopped:
        results[m].update(stopped[m])
      run_files.write_result(results[m], workdirs[m])

  logs: list[MetricsLog | None] = [None] * members
  iterators = [s.iterate(p) for s, p in zip(streams, positions, strict=True)]
  pending: list[tuple[dict[str, jax.Array], jax.Array]] = []
  while step < total_steps and alive.any():
    stepped = [next(it) for it in iterators]
    positions = [p for _, p in stepped]
    batch = stack_member_batches([b for b, _ in stepped], train_data.pad_id)
    state, alive_now, metrics = step_fn(state, jnp.asarray(alive), learning_rates, frozen, batch)
    step += 1
    pending.append((metrics, alive_now))
    if logs[0] is None:  # the first step ran: from here on the workdirs hold these runs
      jax.block_until_ready(metrics)
      with progress.paused():
        for m in range(members):
          run_files.write_config(configs[m], workdirs[m])
          logs[m] = MetricsLog(workdirs[m], resume_step=resume_step, tensorboard=config.tensorboard)
          cleanup.callback(logs[m].close)
    boundary = step == total_steps
    do_eval = boundary or step % config.eval_every_steps == 0
    do_save = boundary or step % config.checkpoint_every_steps == 0
    if not (boundary or do_eval or do_save or step % config.log_every_steps == 0):
      continue
    host = jax.device_get(pending)
    first = step - len(pending) + 1
    pending = []
    progress.mark(step)
    newly_stopped = []
    for m in np.flatnonzero(alive):
      flags = [bool(a[m]) for _, a in host]
      finite = flags.index(False) if False in flags else len(flags)
      losses = [float(metrics['loss'][m]) for metrics, _ in host[:finite]]
      if finite < len(flags):
        bad = host[finite][0]
        stopped[m] = {'stopped_at_step': first + finite - 1, 'stop_reason': (
            f'non-finite training loss {float(bad["loss"][m])} (gradient norm '
            f'{float(bad["grad_norm"][m])}) at step {first + finite}; this member kept its state '
            f'of step {first + finite - 1} and stopped; lower its learning rate')}
        newly_stopped.append(m)
      if losses:
        logs[m].write(first + finite - 1, 'train', {
            'loss': float(np.mean(losses)), 'grad_norm': float(host[finite - 1][0]['grad_norm'][m]),
            'learning_rate': float(schedules[m](first + finite - 2)),
            'examples_per_second': progress.examples_per_second()})
    alive = np.asarray(host[-1][1], bool) & alive
    progress.update(step, float(np.mean([float(host[-1][0]['loss'][m]) for m in np.flatnonzero(alive)]
                                        or [math.nan])))
    for m in newly_stopped:
      _say(f'Member {workdirs[m]}: {stopped[m]["stop_reason"]}.')
      at_step = stopped[m]['stopped_at_step']
      if at_step not in evaluated_at[m]:  # not evaluated at this step yet
        val = run_eval(state.params, validation_split)[m]
        logs[m].write(at_step, validation_split, val)
        consider_best(m, at_step, val)
      finish([m], at_step)
    if do_eval and alive.any():
      vals = run_eval(state.params, validation_split)
      for m in np.flatnonzero(alive):
        evaluated_at[m].add(step)
        logs[m].write(step, validation_split, vals[m])
        consider_best(m, step, vals[m])
    if do_save:
      with progress.paused():
        for m in np.flatnonzero(alive):
          checkpoints[m].save(_member(state, m), {'data_position': positions[m].to_dict(),
                                                  'best': bests[m]})
  unfinished = [m for m in range(members) if results[m] is None]
  for m in range(members):
    checkpoints[m].close()
    if results[m] is None and logs[m] is None:  # resumed at the last step: only the final
      run_files.write_config(configs[m], workdirs[m])  # evaluation was missing
      logs[m] = MetricsLog(workdirs[m], resume_step=resume_step, tensorboard=config.tensorboard)
      cleanup.callback(logs[m].close)
  if unfinished:
    finish(unfinished, step)
  return results


def _final_result(experiment: Experiment, workdir: str, log: MetricsLog, step: int, best_params,
                  frozen, encoded, evaluations: dict[str, dict[str, float]], best, total_steps,
                  wall_start, progress, members) -> dict[str, Any]:
  """A member's result record (the fields a separate run's result.json has), from its best
  checkpoint's `evaluations` on the final splits."""
  config, spec = experiment.config, experiment.spec
  test = {s: m for s, m in evaluations.items() if s in spec.test_splits}
  for split, metrics in test.items():
    log.write(step, split, metrics)
  log.close()
  counts = experiment.counts()
  result = {
      'task': spec.name, 'method': config.method, 'model': config.model,
      'config': run_files.as_json(config),
      'trainable_params': counts.trainable, 'total_params': counts.total,
      'trainable_percent': counts.percent, 'train_steps': total_steps,
      'best_step': best['step'], 'select_metric': best['metric'],
      'validation_metrics': {s: m for s, m in evaluations.items() if s in spec.validation_splits},
      'test_metrics': test,
      'wall_time_s': time.time() - wall_start,
      'train_examples_per_second': progress.overall_examples_per_second(),
      'best_checkpoint': os.path.join(workdir, BEST_DIR),
      'vmapped_members': members,
      **experiment.result_fields,
  }
  if experiment.report is not None:
    result.update(experiment.report(trainable.combine(jax.device_get(best_params),
                                                      jax.device_get(frozen)),
                                    encoded[spec.validation_splits[0]], workdir))
  return result


"""The run engine: one program trains one run, or several as a vmapped group, with one cadence.

    results = train_runs([config], [workdir], vmapped=False)          # `train_and_evaluate`
    results = train_runs(configs, workdirs, vmapped=True)             # `train_group`

Both read the task through `train.run_data` (re-split, encoded once), build one `Member` per run
(`train.members`) and hand the arrays to a program (`train.programs`: `ShardedRun` or
`VmappedGroup`). The engine then runs the cadence every run follows: a train record every
`log_every_steps`, a validation pass every `eval_every_steps` (the best goes to `best/`), a
training checkpoint every `checkpoint_every_steps` and all three at the last step; then the best
params of every member are evaluated on the final splits in one pass, the experiment's report
hook runs, and `result.json` is written last.

Workdir rules (`train.run_files`): nothing but an empty `checkpoints/` is written before the first
step, so a failed start leaves the workdir reusable; a finished run (it has `result.json`) rerun
returns its result and writes nothing. Killed and rerun, the members resume from the newest
checkpoint step they all have, and end as runs that never stopped: the data order is a function
of (seed, epoch), the dropout key of step s is `fold_in(rng, s)`, and a checkpoint restores the
state, the data position and the best record exactly.

A non-finite loss or gradient norm stops a run trained alone with `NonFiniteLossError`; in a group
it stops that member alone (its update is not applied, it is evaluated where it stopped, its
result records `stopped_at_step` and `stop_reason`) and the others train on.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from adapters_jax.checkpoint.training import TrainCheckpoints, restore_newest
from adapters_jax.splicing import trainable
from adapters_jax.train import distributed, run_files
from adapters_jax.train.members import (
  CHECKPOINT_DIR,
  Member,
  build_members,
  load_best,
  result_record,
)
from adapters_jax.train.programs import ShardedRun, VmappedGroup, make_schedule
from adapters_jax.train.progress import Progress
from adapters_jax.train.run_data import (
  encode_splits,
  final_splits_of,
  load_run_task,
  total_steps_of,
)


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def say(line: str) -> None:
  """A line on stderr from process 0."""
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


def train_runs(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], *,
               vmapped: bool) -> list[dict[str, Any]]:
  """Trains `configs[i]` -> `workdirs[i]` as one program; returns their result records.

  Runs whose workdir holds a finished run are reported, not trained. `vmapped=False` takes one
  run (sharded over the config's mesh); `vmapped=True` any number that differ only in learning
  rate and seed (`train.vmapped.check_group`).

  Checkpoint managers and metrics logs are closed however the run ends (Orbax's background
  threads otherwise outlive their event loops and print tracebacks at exit).
  """
  if not vmapped and len(configs) != 1:
    raise ValueError(f'A run trained alone takes one config, not {len(configs)}: use '
                     'train.vmapped.train_group for several.')
  if configs[0].distributed:
    distributed.initialize()
  workdirs = [os.path.abspath(w) for w in workdirs]
  results = [run_files.finished_result(c, w) for c, w in zip(configs, workdirs, strict=True)]
  for workdir, result in zip(workdirs, results, strict=True):
    if result is not None:
      say(f'{workdir} holds a finished run; its result is unchanged.')
  todo = [i for i, r in enumerate(results) if r is None]
  if todo:
    with contextlib.ExitStack() as cleanup:
      trained = _train([configs[i] for i in todo], [workdirs[i] for i in todo], vmapped, cleanup)
    for i, result in zip(todo, trained, strict=True):
      results[i] = result
  return results


def _train(configs, workdirs, vmapped: bool, cleanup: contextlib.ExitStack) -> list[dict]:
  wall_start = time.time()
  config = configs[0]
  task = load_run_task(config)
  spec = task.spec
  members, frozen = build_members(configs, workdirs, spec)
  experiment = members[0].experiment  # encodes, steps and scores for all (same model and kind)
  encoded = encode_splits(config, task, experiment.pretrained.tokenizer, experiment.task_kind)
  total_steps = total_steps_of(config, len(encoded[spec.train_split]))
  for member in members:
    member.schedule = make_schedule(member.config, total_steps)
  train_data = encoded[spec.train_split]
  program = (VmappedGroup(experiment, members, frozen, train_data, total_steps) if vmapped else
             ShardedRun(experiment, members[0], frozen, train_data))
  say(f'{config.method} on {spec.name} with {config.model}: {experiment.counts()}; '
      f'{total_steps} steps of {config.batch_size}, {program.description}')

  for member in members:
    os.makedirs(member.workdir, exist_ok=True)
    member.checkpoints = TrainCheckpoints(os.path.join(member.workdir, CHECKPOINT_DIR),
                                          keep=member.config.keep_checkpoints)
    cleanup.callback(member.checkpoints.close)
  states, resume_step = program.templates(), None
  restored = restore_newest([m.checkpoints for m in members], states)
  if restored is not None:
    resume_step, states_and_meta = restored
    states = [state for state, _ in states_and_meta]
    for member, (_, meta) in zip(members, states_and_meta, strict=True):
      member.position = member.position.from_dict(meta['data_position'])
      member.best = meta['best']
    say(f'Resuming from step {resume_step} in {", ".join(m.checkpoints.directory for m in members)}')
  program.start(states)
  del states
  for member in members:
    member.train_params = None  # the program holds the arrays now

  validation_split = spec.validation_splits[0]
  final_splits = final_splits_of(spec, encoded)
  step = program.step_count()
  progress = Progress(total_steps, step, config.batch_size, config.eval_every_steps,
                      len(encoded[validation_split]), sum(len(encoded[s]) for s in final_splits))

  def run_eval(params, split):
    with progress.paused(), progress.evaluation(split, len(encoded[split]) * len(members)) as done:
      return program.evaluate(params, encoded[split], done)

  def validate(indices, at_step):
    """Evaluates members `indices` on validation at `at_step`; logs and keeps their best."""
    params = program.params()
    metrics = run_eval(params, validation_split)
    for i in indices:
      member = members[i]
      member.evaluated_at = at_step
      member.log.write(at_step, validation_split, metrics[i])
      with progress.paused():
        member.consider_best(at_step, metrics[i], program.member_params(params, i), program.frozen)

  def finish(indices, at_step):
    """Evaluates members' best params on the final splits in one pass; writes their results."""
    best = [trainable.split(load_best(members[i].experiment, members[i].workdir),
                            members[i].experiment.mask)[0] for i in indices]
    stacked = program.stack_params(best)
    evaluations = {s: run_eval(stacked, s) for s in final_splits}
    for row, i in enumerate(indices):
      member = members[i]
      scores = {s: e[row] for s, e in evaluations.items()}
      for split in spec.test_splits:
        if split in scores:
          member.log.write(at_step, split, scores[split])
      member.log.close()
      result = result_record(member, scores, total_steps=total_steps, wall_start=wall_start,
                             examples_per_second=progress.overall_examples_per_second(),
                             extra=program.result_fields)
      if member.experiment.report is not None and jax.process_index() == 0:
        full = trainable.combine(jax.device_get(best[row]), jax.device_get(program.frozen))
        result.update(member.experiment.report(full, encoded[validation_split], member.workdir))
      run_files.write_result(result, member.workdir)
      member.result = result

  stream = program.batches([m.position for m in members])
  pending: list[dict[str, jax.Array]] = []
  claimed = False
  while step < total_steps and any(m.training for m in members):
    batch, positions = next(stream)
    pending.append(program.step(batch))
    step += 1
    for member, position in zip(members, positions, strict=True):
      member.position = position
    if not claimed:  # the first step ran: from here on the workdirs hold these runs
      jax.block_until_ready(pending[-1])
      with progress.paused():  # TensorBoard's first import takes seconds
        for member in members:
          member.claim(resume_step)
          cleanup.callback(member.log.close)
      claimed = True
    boundary = step == total_steps
    do_eval = boundary or step % config.eval_every_steps == 0
    do_save = boundary or step % config.checkpoint_every_steps == 0
    if not (boundary or do_eval or do_save or step % config.log_every_steps == 0):
      continue
    # Pull the losses since the last record: a non-finite one stops before anything is saved.
    stopped = _log_training(members, program, jax.device_get(pending), step, progress)
    pending = []
    for i in stopped:
      member = members[i]
      say(f'Member {member.workdir}: {member.stopped["stop_reason"]}.')
      at_step = member.stopped['stopped_at_step']
      if member.evaluated_at != at_step:
        validate([i], at_step)
      finish([i], at_step)
    training = [i for i, m in enumerate(members) if m.training]
    if do_eval and training:
      validate(training, step)
    if do_save:
      with progress.paused():
        for i in training:
          members[i].checkpoints.save(program.member_state(i), {
              'data_position': members[i].position.to_dict(), 'best': members[i].best})
  unfinished = [i for i, m in enumerate(members) if m.result is None]
  for member in members:
    member.checkpoints.close()
    if member.result is None and member.log is None:  # resumed at the last step: only the
      member.claim(resume_step)                       # final evaluation was missing
      cleanup.callback(member.log.close)
  if unfinished:
    finish(unfinished, step)
  return [m.result for m in members]


def _log_training(members: Sequence[Member], program, host: list[dict[str, np.ndarray]],
                  step: int, progress: Progress) -> list[int]:
  """Writes each training member's train record for the steps `host` holds (up to `step`).

  Returns:
    The members that hit a non-finite loss or gradient norm (they are marked stopped).

  Raises:
    NonFiniteLossError: a run trained alone hit one.
  """
  first = step - len(host) + 1
  losses = np.stack([np.reshape(h['loss'], -1) for h in host])  # [steps, M]
  norms = np.stack([np.reshape(h['grad_norm'], -1) for h in host])  # [steps, M]
  progress.mark(step)
  stopped = []
  for i, member in enumerate(members):
    if not member.training:
      continue
    bad = np.flatnonzero(~(np.isfinite(losses[:, i]) & np.isfinite(norms[:, i])))
    finite = int(bad[0]) if len(bad) else len(host)
    if finite < len(host):
      at = first + finite
      if not program.stops_members_alone:
        raise NonFiniteLossError(
            f'The training loss is {losses[finite, i]} at step {at}; stopping. The last good '
            f'checkpoint (step {member.checkpoints.latest_step()}) is kept in '
            f'{member.checkpoints.directory}; lower the learning rate or check the data before '
            'resuming.')
      member.stopped = {'stopped_at_step': at - 1, 'stop_reason': (
          f'non-finite training loss {float(losses[finite, i])} (gradient norm '
          f'{float(norms[finite, i])}) at step {at}; this member kept its state of step {at - 1} '
          'and stopped; lower its learning rate')}
      stopped.append(i)
    if finite:
      member.log.write(first + finite - 1, 'train', {
          'loss': float(np.mean(losses[:finite, i])), 'grad_norm': float(norms[finite - 1, i]),
          'learning_rate': float(member.schedule(first + finite - 2)),
          'examples_per_second': progress.examples_per_second()})
  alive = [i for i, m in enumerate(members) if m.training]
  progress.update(step, float(np.mean(losses[-1, alive])) if alive else math.nan)
  return stopped

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

A run holds its workdir's lock (`train.workdir_lock`) from before its first write to its end: a
second process on it is refused, naming the holder. SIGTERM (preemption) or Ctrl-C stops the run
after its current step with a checkpoint of every training member there, which also keeps the
losses not yet in a train record, so the rerun's records equal an uninterrupted run's
(`train.stop_signals.RunStoppedError`; the entry point prints its line and exits 0 or 130).

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

from adapters_jax import data
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
from adapters_jax.train.stop_signals import RunStoppedError, StopSignals
from adapters_jax.train.workdir_lock import DirectoryLock


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
    with StopSignals() as signals, contextlib.ExitStack() as cleanup:
      if jax.process_index() == 0:  # one writer per workdir, claimed before anything is written
        for i in todo:
          cleanup.enter_context(DirectoryLock(workdirs[i], 'run'))
      for i in todo:  # a run that finished while this process started is not trained again
        results[i] = run_files.finished_result(configs[i], workdirs[i])
      todo = [i for i in todo if results[i] is None]
      trained = _train([configs[i] for i in todo], [workdirs[i] for i in todo], vmapped, cleanup,
                       signals) if todo else []
    for i, result in zip(todo, trained, strict=True):
      results[i] = result
  return results


def _train(configs, workdirs, vmapped: bool, cleanup: contextlib.ExitStack,
           signals: StopSignals) -> list[dict]:
  """Builds the members and their program, resumes them, and runs the cadence."""
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
      f'{total_steps} steps of {config.batch_size}{program.description}')

  for member in members:
    os.makedirs(member.workdir, exist_ok=True)
    member.checkpoints = TrainCheckpoints(os.path.join(member.workdir, CHECKPOINT_DIR),
                                          keep=member.config.keep_checkpoints)
    cleanup.callback(member.checkpoints.close)
  states, resume_step, carried = program.templates(), None, []
  restored = restore_newest([m.checkpoints for m in members], states)
  if restored is not None:
    resume_step, states_and_meta = restored
    states = [state for state, _ in states_and_meta]
    for member, (_, meta) in zip(members, states_and_meta, strict=True):
      member.position = data.DataPosition.from_dict(meta['data_position'])
      member.best = meta['best']
    carried = _carried_losses([meta for _, meta in states_and_meta])
    say(f'Resuming from step {resume_step} in {", ".join(m.checkpoints.directory for m in members)}')
  program.start(states)
  del states
  for member in members:
    member.train_params = None  # the program holds the arrays now
  run = _Cadence(members, program, spec, encoded, total_steps, wall_start, cleanup, signals)
  return run.train(resume_step, carried)


class _Cadence:
  """The steps every run follows, over the members of one started program."""

  def __init__(self, members: list[Member], program, spec: data.TaskSpec,
               encoded: dict[str, data.BatchSource], total_steps: int, wall_start: float,
               cleanup: contextlib.ExitStack, signals: StopSignals):
    self.members, self.program, self.spec, self.encoded = members, program, spec, encoded
    self.total_steps, self.wall_start, self.cleanup = total_steps, wall_start, cleanup
    self.signals = signals
    self.config = members[0].config
    self.validation_split = spec.validation_splits[0]
    self.final_splits = final_splits_of(spec, encoded)
    self.progress = Progress(total_steps, program.step_count(), self.config.batch_size,
                             self.config.eval_every_steps, len(encoded[self.validation_split]),
                             sum(len(encoded[s]) for s in self.final_splits))

  def train(self, resume_step: int | None, carried: list[dict[str, np.ndarray]]
            ) -> list[dict[str, Any]]:
    """Steps to `total_steps` (or until every member stopped), then finishes the rest.

    `carried` holds the per-step losses since the last train record that a checkpoint saved on
    a signal kept, so the resumed run's next record averages the same steps.

    Raises:
      RunStoppedError: SIGTERM or SIGINT arrived; the step it arrived in was saved.
    """
    config, members, program, progress = self.config, self.members, self.program, self.progress
    step = program.step_count()
    stream = program.batches([m.position for m in members])
    pending: list[dict[str, Any]] = list(carried)
    claimed = False
    while step < self.total_steps and any(m.training for m in members):
      batch, positions = next(stream)
      pending.append(program.step(batch))
      step += 1
      for member, position in zip(members, positions, strict=True):
        member.position = position
      if not claimed:  # the first step ran: from here on the workdirs hold these runs
        jax.block_until_ready(pending[-1])
        with progress.paused():  # TensorBoard's first import takes seconds
          self.claim(members, resume_step)
        claimed = True
      boundary = step == self.total_steps
      do_eval = boundary or step % config.eval_every_steps == 0
      do_save = boundary or step % config.checkpoint_every_steps == 0
      if not (boundary or do_eval or do_save or step % config.log_every_steps == 0):
        if self.signals.requested and jax.process_count() == 1:  # several: agreed at records
          self.stop_on_signal(step, pending, saved=False)
        continue
      # Pull the losses since the last record: a non-finite one stops before anything is saved.
      stopped = _log_training(members, program, jax.device_get(pending), step, progress)
      pending = []
      for i in stopped:
        self.stop(i)
      training = [i for i, m in enumerate(members) if m.training]
      if do_eval and training:
        self.validate(training, step)
      if do_save:
        self.save(training)
      if self.signals.agreed():  # on several processes: any one's signal stops all, here
        self.stop_on_signal(step, [], saved=do_save)
    unfinished = [i for i, m in enumerate(members) if m.result is None]
    for member in members:
      member.checkpoints.close()
    # Resumed at the last step: only the final evaluation was missing.
    self.claim([members[i] for i in unfinished if members[i].log is None], resume_step)
    if unfinished:
      self.finish(unfinished, step)
    return [m.result for m in members]

  def claim(self, members: Sequence[Member], resume_step: int | None) -> None:
    for member in members:
      member.claim(resume_step)
      self.cleanup.callback(member.log.close)

  def evaluate(self, params, split: str) -> list[dict[str, float]]:
    """Every member's metrics of `params` (the program's layout) on `split`."""
    examples = len(self.encoded[split]) * len(self.members)
    with self.progress.paused(), self.progress.evaluation(split, examples) as done:
      return self.program.evaluate(params, self.encoded[split], done)

  def validate(self, indices: Sequence[int], at_step: int) -> None:
    """Evaluates members `indices` on validation at `at_step`; logs and keeps their best."""
    params = self.program.params()
    metrics = self.evaluate(params, self.validation_split)
    for i in indices:
      member = self.members[i]
      member.evaluated_at = at_step
      member.log.write(at_step, self.validation_split, metrics[i])
      with self.progress.paused():
        member.consider_best(at_step, metrics[i], self.program.member_params(params, i),
                             self.program.frozen)

  def save(self, indices: Sequence[int], pending: Sequence[dict[str, Any]] = ()) -> None:
    """Checkpoints members `indices`, with the losses of `pending` steps not yet recorded."""
    host = jax.device_get(list(pending))
    with self.progress.paused():
      for i in indices:
        member = self.members[i]
        member.checkpoints.save(self.program.member_state(i), {
            'data_position': member.position.to_dict(), 'best': member.best,
            'unrecorded_losses': [[float(np.reshape(h['loss'], -1)[i]),
                                   float(np.reshape(h['grad_norm'], -1)[i])] for h in host]})

  def stop_on_signal(self, step: int, pending: Sequence[dict[str, Any]], saved: bool) -> None:
    """Saves every training member at `step` (unless `saved`) and raises `RunStoppedError`."""
    training = [i for i, m in enumerate(self.members) if m.training]
    if not saved:
      self.save(training, pending)
    for member in self.members:
      member.checkpoints.close()
    raise RunStoppedError(self.signals.requested, step,
                     [self.members[i].checkpoints.directory for i in training])

  def stop(self, index: int) -> None:
    """A member that hit a non-finite loss: evaluated where it stopped, then finished."""
    member = self.members[index]
    say(f'Member {member.workdir}: {member.stopped["stop_reason"]}.')
    at_step = member.stopped['stopped_at_step']
    if member.evaluated_at != at_step:
      self.validate([index], at_step)
    self.finish([index], at_step)

  def finish(self, indices: Sequence[int], at_step: int) -> None:
    """Evaluates members' best params on the final splits in one pass; writes their results."""
    members = [self.members[i] for i in indices]
    best = [trainable.split(load_best(m.experiment, m.workdir), m.experiment.mask)[0]
            for m in members]
    stacked = self.program.stack_params(best)
    evaluations = {s: self.evaluate(stacked, s) for s in self.final_splits}
    for row, member in enumerate(members):
      scores = {s: e[row] for s, e in evaluations.items()}
      for split in self.spec.test_splits:
        if split in scores:
          member.log.write(at_step, split, scores[split])
      member.log.close()
      result = result_record(member, scores, total_steps=self.total_steps,
                             wall_start=self.wall_start,
                             examples_per_second=self.progress.overall_examples_per_second(),
                             extra=self.program.result_fields)
      if member.experiment.report is not None and jax.process_index() == 0:
        full = trainable.combine(jax.device_get(best[row]), jax.device_get(self.program.frozen))
        result.update(member.experiment.report(full, self.encoded[self.validation_split],
                                               member.workdir))
      run_files.write_result(result, member.workdir)
      member.result = result


def _carried_losses(metas: Sequence[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
  """The unrecorded per-step losses the members' checkpoints kept, as the program's step
  outputs: one `{'loss', 'grad_norm'}` of `[M]` float32 per step (what `_log_training` reads)."""
  # Checkpoints written before this field existed saved on record steps only: nothing unrecorded.
  columns = [np.asarray(meta.get('unrecorded_losses', []), np.float32).reshape(-1, 2)
             for meta in metas]  # M x [steps, 2]
  stacked = np.stack(columns, axis=1)  # [steps, M, 2]
  return [{'loss': row[:, 0], 'grad_norm': row[:, 1]} for row in stacked]


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

"""Resumable training checkpoints: an Orbax CheckpointManager over the *trainable* state only.

Each step directory holds `state` (trainable params, their optimizer state, step, rng) and `meta`
(JSON: data position, best-so-far on validation). Frozen base weights are never written; a resumed
run reloads them from the base model. Saves are synchronous and atomic (Orbax finalises a step
directory by renaming it), so a run killed at any moment resumes from its last complete step.

Each complete step gets a digest of its files (`DIGEST_FILE`, sha256 per file). A step whose files
no longer match it, or that Orbax cannot read, is reported in one line, removed, and the run resumes
from the newest step that restores (`keep_checkpoints` keeps older ones); the removed step is then
written again by the resumed run, so a corrupt checkpoint never stands in for a good one. Checking
the digest first keeps Orbax from starting a restore that fails halfway, which leaves reads pending
on a closed event loop (tracebacks at exit).
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from adapters_jax.checkpoint import disk_full
from adapters_jax.checkpoint.digest import DIGEST_FILE, differing_files, write_digests
from adapters_jax.checkpoint.save import CheckpointError
from adapters_jax.train.step import TrainState


class TrainCheckpoints:
  """Keeps the last `keep` training checkpoints under `directory`."""

  def __init__(self, directory: str, keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, meta: dict[str, Any]) -> None:
    """Saves `state` and `meta` as step `state.step`.

    Raises:
      DiskFullError: the device is full (one line); earlier steps are intact, partial files removed.
    """
    step = int(jax.device_get(state.step))
    latest = self.manager.latest_step()
    intact = f'the checkpoint at step {latest}' if latest is not None else ''
    partial = lambda: glob.glob(os.path.join(glob.escape(self.directory), '*.orbax-checkpoint-tmp*'))
    with disk_full.reporting(self._step_dir(step), disk_full.tree_bytes(state), partial, intact):
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_as_dict(state)),
                                                      meta=ocp.args.JsonSave(meta)))
      self.manager.wait_until_finished()
    if jax.process_index() == 0:
      # Orbax has committed the step: a digest that does not fit leaves it to Orbax's own checks.
      digest_tmp = lambda: glob.glob(os.path.join(glob.escape(self._step_dir(step)), '.*.tmp'))
      with disk_full.reporting(self._step_dir(step), 1 << 12, digest_tmp, f'the checkpoint at step {step}'):
        write_digests(self._step_dir(step))

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def check_files(self, step: int) -> None:
    """Raises CheckpointError when a file of `step` differs from its recorded digest."""
    try:
      # None: killed between Orbax's commit and the digest; Orbax's own checks remain.
      differ = differing_files(self._step_dir(step))
    except ValueError as e:
      raise CheckpointError(f'The checkpoint at step {step} has an unreadable {DIGEST_FILE}.') from e
    if differ:
      raise CheckpointError(f'The checkpoint at step {step} in {self.directory} is damaged: '
                            f'{len(differ)} file(s) differ from their digest (e.g. {differ[0]}).')

  def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores step `step` into the structure (and shardings) of `like`.

    Raises:
      CheckpointError: the step does not fit `like` or its files cannot be read (one line).
    """
    self.check_files(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _as_dict(like))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises bare Exceptions (with long TensorStore dumps) on damage.
      raise CheckpointError(
          f'The checkpoint at step {step} in {self.directory} cannot be restored into this run: '
          f'{_first_line(e)}') from e
    state = restored['state']
    return (TrainState(step=state['step'], params=state['params'], opt_state=state['opt_state'],
                       rng=state['rng']), restored['meta'])

  def close(self) -> None:
    """Closes the manager (and its threads); a second call does nothing."""
    if self.manager is not None:
      self.manager.close()
      self.manager = None


def restore_newest(checkpoints: Sequence[TrainCheckpoints], likes: Sequence[TrainState]
                   ) -> tuple[int, list[tuple[TrainState, dict[str, Any]]]] | None:
  """The newest step that every one of `checkpoints` has and that restores into `likes`.

  A run trained alone passes one manager; the members of a vmapped group pass one each, and
  resume together from the newest step they all have (newer steps of some members are removed).
  A step that does not restore for some member is reported in one line and removed for all of
  them, once an older step restores.

  Returns:
    `(step, [(state, meta) per manager])`, or None when they have no common step.

  Raises:
    CheckpointError: no common step restores (e.g. they were made with another model, method or
      optimizer config); names the newest step's problem.
  """
  held = [set(c.manager.all_steps()) for c in checkpoints]
  common = sorted(set.intersection(*held), reverse=True) if held else []
  newest = common[0] if common else None
  for manager, steps in zip(checkpoints, held, strict=True):
    for step in sorted(steps):
      if newest is None or step > newest:
        manager.manager.delete(step)
  failed: list[tuple[int, CheckpointError]] = []
  for step in common:
    try:
      restored = [c.restore(step, like) for c, like in zip(checkpoints, likes, strict=True)]
    except CheckpointError as e:
      failed.append((step, e))
      continue
    for bad, error in failed:
      if jax.process_index() == 0:
        print(f'{error} Removed it; resuming from step {step}.', file=sys.stderr, flush=True)
      for manager in checkpoints:
        manager.manager.delete(bad)
    for manager in checkpoints:
      manager.manager.reload()
    return step, restored
  for manager in checkpoints:
    manager.manager.reload()
  if failed:
    raise CheckpointError(f'{failed[0][1]} No step in {checkpoints[0].directory} restores (steps '
                          f'{common}): was it made with another model, method or optimizer '
                          'config? Use a new --workdir.') from failed[0][1]
  return None


def _as_dict(state: TrainState) -> dict[str, Any]:
  return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state,
          'rng': state.rng}


def _first_line(error: BaseException) -> str:
  """The first line of an error, cut to 300 characters."""
  lines = [line for line in str(error).splitlines() if line.strip()]
  return f'{type(error).__name__}: {(lines[0] if lines else "")[:300]}'

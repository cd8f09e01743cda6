"""Resumable training checkpoints: an Orbax CheckpointManager over the *trainable* state only.

Each step directory holds `state` (trainable params, their optimizer state, step, rng) and `meta`
(JSON: data position, best-so-far on validation). Frozen base weights are never written; a resumed
run reloads them from the base model. Saves are synchronous and atomic (Orbax finalises a step
directory by renaming it), so a run killed at any moment resumes from its last complete step.

A step that cannot be read (damaged files) is reported in one line, removed, and the run resumes
from the newest step that can (`keep_checkpoints` keeps older ones); the removed step is then
written again by the resumed run, so a corrupt checkpoint never stands in for a good one.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from adapters_jax.checkpoint import CheckpointError
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
    step = int(jax.device_get(state.step))
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_as_dict(state)),
                                                    meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores step `step` into the structure (and shardings) of `like`.

    Raises:
      CheckpointError: the step does not fit `like` or its files cannot be read (one line).
    """
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

  def restore_latest(self, like: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    """The newest step that restores, after removing newer ones that do not; None when none exist.

    Raises:
      CheckpointError: no step restores (e.g. they were made with another model, method or
        optimizer config); names the newest step's problem.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    failed: list[tuple[int, CheckpointError]] = []
    for step in steps:
      try:
        restored = self.restore(step, like)
      except CheckpointError as e:
        failed.append((step, e))
        continue
      for bad, error in failed:
        print(f'Checkpoint step {bad} is unreadable and was removed ({error}); resuming from step '
              f'{step}.', file=sys.stderr, flush=True)
        self.manager.delete(bad)
      self.manager.reload()
      return restored
    if failed:
      raise CheckpointError(f'{failed[0][1]} No step in {self.directory} restores (steps '
                            f'{steps}): was it made with another model, method or optimizer config? '
                            'Use a new --workdir.') from failed[0][1]
    return None

  def close(self) -> None:
    self.manager.close()


def _as_dict(state: TrainState) -> dict[str, Any]:
  return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state,
          'rng': state.rng}


def _first_line(error: BaseException) -> str:
  """The first line of an error, cut to 300 characters."""
  lines = [line for line in str(error).splitlines() if line.strip()]
  return f'{type(error).__name__}: {(lines[0] if lines else "")[:300]}'

"""Resumable training checkpoints: an Orbax CheckpointManager over the *trainable* state only.

Each step directory holds `state` (trainable params, their optimizer state, step, rng) and `meta`
(JSON: data position, best-so-far on validation). Frozen base weights are never written; a resumed
run reloads them from the base model. Saves are synchronous and atomic (Orbax finalises a step
directory by renaming it), so a run killed at any moment resumes from its last complete step.
"""

from __future__ import annotations

import os
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
    """Restores step `step` into the structure (and shardings) of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _as_dict(like))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f'The checkpoint at step {step} in {self.directory} does not fit this run (was it made '
          f'with another model, method or optimizer config?): {str(e)[:500]}') from e
    state = restored['state']
    return (TrainState(step=state['step'], params=state['params'], opt_state=state['opt_state'],
                       rng=state['rng']), restored['meta'])

  def close(self) -> None:
    self.manager.close()


def _as_dict(state: TrainState) -> dict[str, Any]:
  return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state,
          'rng': state.rng}

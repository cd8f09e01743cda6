"""How a program steps and evaluates its members: one run sharded over a mesh, or a vmapped group.

The run engine (`train.engine`) owns the cadence, the files and the resume; a program owns the
arrays. Both kinds answer the same calls, with results per member (lists in member order):

  * `templates()`: each member's fresh train state (the structure and placement a checkpoint
    restores into); `start(states)` takes the fresh or restored states and builds the step;
  * `batches(positions)`: endless `(batch, positions after it)` from each member's data position;
  * `step(batch)`: one update of every member; returns `{'loss', 'grad_norm'}`, each with one
    value per member (a scalar for `ShardedRun`, `[M]` for `VmappedGroup`);
  * `member_state(m)`, `params()`, `member_params(params, m)`: the arrays to checkpoint and save;
  * `stack_params(per-member params)`: best params as `evaluate` takes them;
  * `evaluate(params, dataset, on_batch)`: every member's metrics on one split, in one pass.

`ShardedRun` is a run trained alone: state and batches placed on the config's mesh, several
processes allowed; a non-finite loss stops it with an error. `VmappedGroup` stacks its members'
states on a leading member axis, shares one frozen tree, and reads each member's own batches; a
member whose loss or gradient norm is non-finite keeps its last finite state and stops alone.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from adapters_jax import data
from adapters_jax.splicing.tree import Params
from adapters_jax.train import optimizer, placement
from adapters_jax.train.evaluation import (
  evaluate,
  evaluate_members,
  make_eval_step,
  make_member_eval_step,
)
from adapters_jax.train.experiment import Experiment
from adapters_jax.train.member_batches import stacked_member_batches
from adapters_jax.train.members import Member
from adapters_jax.train.step import TrainState, create_train_state, train_step


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate` over `warmup_ratio` of the steps, then linear decay to 0."""
  warmup = int(round(config.warmup_ratio * total_steps))
  return optax.join_schedules([
      optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
      optax.linear_schedule(config.learning_rate, 0.0, max(total_steps - warmup, 1)),
  ], [max(warmup, 1)])


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


def _fresh_state(member: Member, tx: optax.GradientTransformation) -> TrainState:
  return create_train_state(member.train_params, tx, jax.random.PRNGKey(member.config.seed))


def _adamw(config: ml_collections.ConfigDict, schedule: optax.Schedule):
  return optimizer.adamw(schedule, weight_decay=config.weight_decay, clip_norm=config.clip_norm)


class ShardedRun:
  """One member on the config's mesh (data parallel over its devices, several processes)."""

  stops_members_alone = False

  def __init__(self, experiment: Experiment, member: Member, frozen: Params,
               train_data: data.BatchSource):
    config = member.config
    self.experiment, self.config = experiment, config
    self.arrays = placement.Placement.from_config(config)
    placement.check_batch_size(config.batch_size, self.arrays.mesh)
    placement.check_batch_size(config.eval_batch_size, self.arrays.mesh)
    self.tx = _adamw(config, member.schedule)
    self._template, self.frozen = self.arrays.place(_fresh_state(member, self.tx), frozen)
    self.stream = data.TrainBatches(train_data, config.batch_size, config.seed,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count(),
                                    sort_window=config.sort_window)
    self.description = f' on {self.arrays.mesh.size} device(s)'  # after 'N steps of B'
    self.result_fields: dict[str, Any] = {}

  def templates(self) -> list[TrainState]:
    return [self._template]

  def start(self, states: Sequence[TrainState]) -> None:
    self.state = states[0]
    del self._template  # donated by the first step when it is the fresh state
    # Dequantised kernels of a quantised base stay split as their codes are on the mesh.
    placed = dataclasses.replace(self.experiment,
                                 frozen_shardings=jax.tree.map(lambda x: x.sharding, self.frozen))
    step_fn, self._eval_step = make_step_fns(placed, self.tx)
    self._step = self.arrays.pin_train_step(step_fn, self.state, self.frozen)

  def step_count(self) -> int:
    return int(jax.device_get(self.state.step))

  def batches(self, positions: Sequence[data.DataPosition]
              ) -> Iterator[tuple[dict[str, Any], list[data.DataPosition]]]:
    for batch, after in self.stream.iterate(positions[0]):
      yield placement.shard_batch(batch, self.arrays.mesh), [after]

  def step(self, batch) -> dict[str, jax.Array]:
    self.state, metrics = self._step(self.state, self.frozen, batch)
    return metrics

  def member_state(self, index: int) -> TrainState:
    return self.state

  def params(self) -> Params:
    return self.state.params

  def member_params(self, params: Params, index: int) -> Params:
    return params

  def stack_params(self, member_params: Sequence[Params]) -> Params:
    return self.arrays.params(member_params[0])

  def evaluate(self, params: Params, dataset: data.BatchSource,
               on_batch: Callable[[int], None]) -> list[dict[str, float]]:
    return [evaluate(self.experiment.task_kind, self._eval_step, params, self.frozen, dataset,
                     self.config.eval_batch_size, self.arrays.mesh, on_batch=on_batch)]


class VmappedGroup:
  """Members stacked on a leading axis, one program on the default device (single process)."""

  stops_members_alone = True

  def __init__(self, experiment: Experiment, members: Sequence[Member], frozen: Params,
               train_data: data.BatchSource, total_steps: int):
    if jax.process_count() > 1:
      raise ValueError('A vmapped group runs in one process; launch its runs one by one.')
    self.experiment, self.config = experiment, members[0].config
    self.size = len(members)
    self._templates = [_fresh_state(m, _adamw(m.config, m.schedule)) for m in members]
    self.frozen = jax.device_put(frozen)
    self.learning_rates = jnp.asarray([m.config.learning_rate for m in members], jnp.float32)
    self.streams = [data.TrainBatches(train_data, m.config.batch_size, m.config.seed,
                                      sort_window=m.config.sort_window) for m in members]
    self._step = make_group_step(experiment, self.config, total_steps)
    self._eval_step = make_member_eval_step(experiment.task_kind, experiment.forward)
    self.description = (f', {self.size} members (learning rates '
                        f'{[m.config.learning_rate for m in members]}, seeds '
                        f'{[m.config.seed for m in members]}) as one program')
    self.result_fields = {'vmapped_members': self.size}

  def templates(self) -> list[TrainState]:
    return self._templates

  def start(self, states: Sequence[TrainState]) -> None:
    self.state = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    self.alive = jnp.ones(self.size, bool)
    del self._templates

  def step_count(self) -> int:
    return int(jax.device_get(self.state.step[0]))

  def batches(self, positions: Sequence[data.DataPosition]):
    return stacked_member_batches(self.streams, positions)

  def step(self, batch) -> dict[str, jax.Array]:
    self.state, self.alive, metrics = self._step(self.state, self.alive, self.learning_rates,
                                                 self.frozen, batch)
    return metrics

  def member_state(self, index: int) -> TrainState:
    return self.member_params(self.state, index)

  def params(self) -> Params:
    return self.state.params

  def member_params(self, params: Any, index: int) -> Any:
    return jax.tree.map(lambda leaf: leaf[index], params)

  def stack_params(self, member_params: Sequence[Params]) -> Params:
    """Stacked and padded to all members' rows, so that the eval step is not compiled again."""
    padded = list(member_params) + [member_params[0]] * (self.size - len(member_params))
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *padded)

  def evaluate(self, params: Params, dataset: data.BatchSource,
               on_batch: Callable[[int], None]) -> list[dict[str, float]]:
    return evaluate_members(self.experiment.task_kind, self._eval_step, params, self.frozen,
                            dataset, self.config.eval_batch_size, on_batch=on_batch)

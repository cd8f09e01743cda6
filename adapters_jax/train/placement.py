"""A run's arrays on the device mesh: the batch split over `data`, params and state by the rules of
`config.sharding` (`train.sharding_rules`: data, fsdp, tp, fsdp+tp).

On one host this spreads a batch over all local devices; on several hosts (after
`jax.distributed.initialize()`) each host feeds its own slice of the global batch and
`jax.make_array_from_process_local_data` assembles the global array. Devices of one `model` group
receive the same rows (tensor parallelism splits the weights, not the batch).

The training loop places everything through one `Placement`:

    placement = Placement.from_config(config)
    state, frozen = placement.place(state, frozen)
    step = placement.pin_train_step(step, state, frozen)
    state, metrics = step(state, frozen, shard_batch(batch, placement.mesh))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adapters_jax.train import sharding_rules
from adapters_jax.train.sharding_rules import DATA_AXIS, MODEL_AXIS  # noqa: F401 (public names)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over `data`; replicated over `model`."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  data_size = mesh.shape[DATA_AXIS]
  if global_batch_size % data_size:
    raise ValueError(f'The global batch size {global_batch_size} must be divisible by the size of '
                     f'the mesh\'s data axis ({data_size}); choose a multiple of {data_size}.')


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(host_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows of a global batch -> global arrays sharded along the batch axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}


def gather(tree: Any) -> Any:
  """Global arrays -> numpy on every host (all-gather across hosts when there are several)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


@dataclasses.dataclass(frozen=True)
class Placement:
  """The mesh, the param rules and the frozen base's storage dtype of a run."""

  mesh: Mesh
  rules: sharding_rules.Rules
  frozen_dtype: Any

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  devices: list | None = None) -> Placement:
    """From `config.sharding`, `config.model_parallelism` and `config.frozen_dtype`."""
    strategy, parallelism = config.sharding, config.model_parallelism
    rules = sharding_rules.strategy_rules(strategy)
    if strategy in ('data', 'fsdp') and parallelism != 1:
      raise ValueError(f'sharding={strategy!r} has no model axis: set model_parallelism=1, or '
                       f'sharding=\'tp\' / \'fsdp+tp\' to use model_parallelism={parallelism}.')
    if config.frozen_dtype not in sharding_rules.FROZEN_DTYPES:
      raise ValueError(f'frozen_dtype={config.frozen_dtype!r} is not supported; valid: '
                       f'{list(sharding_rules.FROZEN_DTYPES)}.')
    return cls(sharding_rules.make_mesh(devices, parallelism), rules,
               sharding_rules.FROZEN_DTYPES[config.frozen_dtype])

  def place(self, state: Any, frozen: Any) -> tuple[Any, Any]:
    """The train state and the frozen params (cast to the storage dtype) on the mesh."""
    frozen = sharding_rules.cast_floating(frozen, self.frozen_dtype)
    state = jax.device_put(state, sharding_rules.state_shardings(state, self.rules, self.mesh))
    return state, jax.device_put(frozen, self.param_shardings(frozen))

  def pin_train_step(self, step_fn: Any, state: Any, frozen: Any) -> Any:
    """`step_fn(state, frozen, batch) -> (state, metrics)` jitted with the placed `state`'s and
    `frozen`'s shardings on its inputs and outputs, the batch split over `data`, metrics
    replicated, the state donated. Left free, XLA picks other output shardings (e.g. splits
    replicated optimizer moments) and the second step compiles again."""
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
    return jax.jit(step_fn, donate_argnums=(0,),
                   in_shardings=(state_shardings, frozen_shardings, batch_sharding(self.mesh)),
                   out_shardings=(state_shardings, replicated(self.mesh)))

  def param_shardings(self, params: Any) -> Any:
    return sharding_rules.tree_shardings(params, self.rules, self.mesh)

  def params(self, params: Any) -> Any:
    """A (trainable) param tree placed by the rules, e.g. the best checkpoint's leaves."""
    return jax.device_put(params, self.param_shardings(params))

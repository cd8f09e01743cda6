"""Data parallelism over a device mesh: batch sharded on `data`, params and state replicated.

On one host this spreads a batch over all local devices; on several hosts (after
`jax.distributed.initialize()`) each host feeds its own slice of the global batch and
`jax.make_array_from_process_local_data` assembles the global array.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over all devices (or `devices`), axis `data`."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  if global_batch_size % mesh.size:
    raise ValueError(f'The global batch size {global_batch_size} must be divisible by the number '
                     f'of devices ({mesh.size}); choose a multiple of {mesh.size}.')


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows of a global batch -> global arrays sharded along the batch axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}


def gather(tree: Any) -> Any:
  """Global arrays -> numpy on every host (all-gather across hosts when there are several)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)

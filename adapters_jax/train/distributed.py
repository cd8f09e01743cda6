"""Joining a multi-process JAX job (`config.distributed=True`): `jax.distributed.initialize`.

On a TPU VM pod slice or under SLURM (`srun`), JAX finds the coordinator, the process count and
this process's id by itself. Anywhere else (several processes on one machine, a hand-made cluster)
give all three in the environment of every process:

  JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python -m experiments.train ...

`JAX_COORDINATOR_ADDRESS` is read by JAX itself; the other two are read here. Call it before
anything touches a JAX device.
"""

from __future__ import annotations

import os

import jax

NUM_PROCESSES = 'JAX_NUM_PROCESSES'
PROCESS_ID = 'JAX_PROCESS_ID'
COORDINATOR = 'JAX_COORDINATOR_ADDRESS'


def _int_variable(name: str) -> int | None:
  text = os.environ.get(name, '').strip()
  if not text:
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f'{name}={text!r} is not an integer; set it to the process count (or this '
                     'process\'s id, from 0).') from None


def initialize() -> None:
  """Joins the job: processes from the environment when given, else JAX's cluster detection.

  Raises:
    ValueError: only some of the three variables are set (names the missing ones).
  """
  num_processes, process_id = _int_variable(NUM_PROCESSES), _int_variable(PROCESS_ID)
  given = {COORDINATOR: os.environ.get(COORDINATOR), NUM_PROCESSES: num_processes,
           PROCESS_ID: process_id}
  missing = [name for name, value in given.items() if value is None]
  if 0 < len(missing) < len(given):
    raise ValueError(f'Set all of {list(given)} or none (none: detect the TPU pod or SLURM job); '
                     f'missing {missing}.')
  jax.distributed.initialize(num_processes=num_processes, process_id=process_id)

"""A grid row as one program: runs that differ only in `VMAP_FIELDS` train together under `vmap`.

    results = train_group([config_lr3e4_seed0, config_lr1e3_seed1], [workdir_a, workdir_b])

It is the run engine (`train.engine`) with several members, for every task kind a run trained
alone trains (classification, regression, text-to-text, causal LM; generation-based evaluation
included). The members' trainable params and optimizer states are stacked on a leading member
axis; the frozen base is one argument shared by all (never copied per member). Each member reads
exactly the batches its separate run reads (its own seed's order, `[members, batch, ...]` gathered
on the host, `train.member_batches`), follows its own learning-rate schedule (the config's schedule
with peak 1, scaled by the member's rate inside the program), and writes what a separate run
writes to its own workdir: `config.json`, `metrics.jsonl`, training checkpoints, `best/` and
`result.json`. A member's workdir is therefore also an ordinary run: `experiments.train` on it
resumes or reports it, and `experiments.report` reads it unchanged.

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

import json
from collections.abc import Sequence
from typing import Any

import ml_collections

from adapters_jax.train import run_files
from adapters_jax.train.engine import train_runs

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
  return train_runs(configs, workdirs, vmapped=True)

"""The vmap launcher: the runs of a grid row that share one program train together, in this process.

Runs whose configs are equal but for the group's free fields (`fields`: learning rate and seed,
`adapters_jax.train.vmapped.VMAP_FIELDS`) form a group; each group is trained by one call of
`train_group(configs, workdirs)` (the vmapped program), groups one after another, in waves when
runs read other runs (fusion after its adapters). `max_members` > 0 splits larger groups. Like
the local launcher: finished runs are skipped, stale ones are not run, an interrupted group
resumes, a group that fails is reported and the others go on, and a run that reads a failed run
is not started. A member that stopped on a non-finite loss has its result (it says so) and is
reported as stopped.

Example:
  runs = plan(config_path, sweep_dir, open_fields=OPEN_FIELDS)
  outcome = run_vmapped(config_path, runs, train_group, fields=('learning_rate', 'seed'),
                        open_fields=OPEN_FIELDS)
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import ml_collections

from adapters_jax.config import loading
from adapters_jax.sweeps.launchers import waves
from adapters_jax.sweeps.plan import Run, unfinished_runs
from adapters_jax.train.stop_signals import RunStoppedError

TrainGroup = Callable[[list[ml_collections.ConfigDict], list[str]], list[dict[str, Any]]]


def group_runs(runs: Sequence[Run], fields: Collection[str],
               max_members: int = 0) -> list[list[Run]]:
  """Runs grouped by their resolved config without `fields`, in plan order; groups larger than
  `max_members` (> 0) are split in order."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    key = json.dumps({k: v for k, v in run.config.items() if k not in fields}, sort_keys=True,
                     default=repr)
    groups.setdefault(key, []).append(run)
  if max_members <= 0:
    return list(groups.values())
  return [group[i:i + max_members] for group in groups.values()
          for i in range(0, len(group), max_members)]


@dataclasses.dataclass
class VmapOutcome:
  """What `run_vmapped` did, by run name: skipped (finished), stale (-> differing fields),
  succeeded, stopped (-> reason), failed (-> error), blocked (-> the run it reads)."""

  skipped: list[str] = dataclasses.field(default_factory=list)
  stale: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  succeeded: list[str] = dataclasses.field(default_factory=list)
  stopped: dict[str, str] = dataclasses.field(default_factory=dict)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  blocked: dict[str, str] = dataclasses.field(default_factory=dict)


def run_vmapped(config_path: str, runs: Sequence[Run], train_group: TrainGroup, *,
                fields: Collection[str], open_fields: Collection[str] = (), max_members: int = 0,
                log: Callable[[str], None] = print) -> VmapOutcome:
  """Trains the unfinished runs group by group (see the module docstring)."""
  module = loading.load_config_module(config_path)
  _, arg = loading.split_config_path(config_path)
  outcome = VmapOutcome()
  todo = unfinished_runs(runs, outcome.skipped, outcome.stale, log)
  bad = set(outcome.stale)
  plans = [group_runs([r for r in wave if r in todo], fields, max_members) for wave in waves(runs)]
  log(f'{len(runs)} runs: {len(outcome.skipped)} finished, {len(outcome.stale)} stale, '
      f'{len(todo)} to run in {sum(len(p) for p in plans)} vmapped groups.')
  for groups in plans:
    for group in groups:
      blocked = {r.name: n for r in group for n in r.after if n in bad}
      if blocked:
        for name, reads in blocked.items():
          outcome.blocked[name] = reads
          log(f'BLOCKED {name}: it reads {reads}, which did not finish.')
        group = [r for r in group if r.name not in blocked]
        bad |= set(blocked)
        if not group:
          continue
      names = [r.name for r in group]
      log(f'start {len(group)} members as one program: {", ".join(names)}')
      start = time.time()
      try:
        configs = []
        for run in group:
          config = loading.get_config(module, arg)
          config.lock()
          loading.apply_overrides(config, run.flags, open_fields)
          configs.append(config)
        results = train_group(configs, [r.workdir for r in group])
      except RunStoppedError:  # SIGTERM or Ctrl-C: the sweep stops; its rerun resumes the group
        raise
      except Exception as e:  # noqa: BLE001 a failed group is reported and the others go on
        message = ' '.join(f'{type(e).__name__}: {e}'.split())
        for name in names:
          outcome.failed[name] = message
        bad |= set(names)
        log(f'FAILED {", ".join(names)}: {message}')
        continue
      for run, result in zip(group, results, strict=True):
        if 'stop_reason' in result:
          outcome.stopped[run.name] = result['stop_reason']
          log(f'STOPPED {run.name}: {result["stop_reason"]}')
        else:
          outcome.succeeded.append(run.name)
      log(f'done  {len(group)} members in {(time.time() - start) / 60:.1f} min')
  return outcome

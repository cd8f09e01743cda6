r"""Runs of a sweep: each grid point's name, workdir, resolved config and `experiments.train` command.

A run is `python -m experiments.train --config=<file>[:<arg>] --workdir=<sweep_dir>/<name>
--config.k=v ...`: the sweep's own overrides (from its command line) first, then the point's, every
one a `--config.k=v` flag parsed by `adapters_jax.config.loading` (open fields such as
`method_options` take new keys). Planning resolves every run's config from exactly that text, so a
grid key the config does not have fails here, naming the closest fields, before anything runs.

Example:
  runs = plan('experiments/configs/mini_rotten_tomatoes.py', '/tmp/sweep',
              open_fields=('method_options',))
  for run in runs:
    print(shlex.join(run.command))
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import ml_collections

from adapters_jax.config import loading
from adapters_jax.config.saved_configs import differing_fields
from adapters_jax.sweeps import grid

RESULT_FILE = 'result.json'   # written by `train_and_evaluate` when a run is complete
CONFIG_FILE = 'config.json'   # written by `train_and_evaluate` when a run starts
RUNS_FILE = 'runs.json'       # the sweep's plan: name, overrides, command of every run
LOG_FILE = 'train.log'        # stdout + stderr of a locally launched run
TRAIN_MODULE = 'experiments.train'

Check = Callable[[ml_collections.ConfigDict], None]


@dataclasses.dataclass(frozen=True)
class Run:
  """One grid point: its name, overrides, workdir, the command that trains it, its resolved config
  (as the JSON the loop saves), the runs it reads from (`after`: they must finish first) and the
  (key, text) config flags of its command, in order."""

  name: str
  overrides: dict[str, Any]
  workdir: str
  command: tuple[str, ...]
  config: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
  after: tuple[str, ...] = ()
  flags: tuple[tuple[str, str], ...] = ()

  @property
  def finished(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, RESULT_FILE))

  @property
  def started(self) -> bool:
    return os.path.isdir(os.path.join(self.workdir, 'checkpoints'))

  def stale_fields(self) -> list[str]:
    """Fields whose value in the workdir's saved config.json differs from this run's config.

    The name hashes only the overrides, so after the config file's base values change, an old
    run would otherwise be skipped as finished (or fail to resume) under the new run's name.
    A field missing from the saved config (added to the schema since) counts as its schema
    default, as `train.run_files.check_config` counts it (`config.saved_configs.differing_fields`).
    """
    path = os.path.join(self.workdir, CONFIG_FILE)
    if not self.config or not os.path.exists(path):
      return []
    with open(path) as f:
      saved = json.load(f)
    return differing_fields(saved, self.config)


def unfinished_runs(runs: Sequence[Run], skipped: list[str], stale: dict[str, list[str]],
                    log: Callable[[str], None]) -> list[Run]:
  """The runs still to train; appends finished ones to `skipped` and records (and logs) in `stale`
  those whose workdir holds a run of another config."""
  todo = []
  for run in runs:
    fields = run.stale_fields()
    if fields:
      stale[run.name] = fields
      log(f'STALE {run.name}: its workdir holds a run whose {", ".join(fields)} differ from the '
          'config now; not run. Delete the workdir to rerun it, or use another --sweep_dir.')
    elif run.finished:
      skipped.append(run.name)
    else:
      todo.append(run)
  return todo


def flag_text(value: Any) -> str:
  """A grid value as `--config.k=` text that `loading.set_field` reads back as `value`."""
  text = loading.format_value(value)
  if isinstance(value, str) and loading.parse_value(text) != value:
    return repr(value)  # '8' stays a string in an open field
  return text


def train_command(config_path: str, workdir: str, overrides: Sequence[tuple[str, str]],
                  python: str = sys.executable) -> tuple[str, ...]:
  """`python -m experiments.train --config=... --workdir=... --config.k=text ...`."""
  return (python, '-m', TRAIN_MODULE, f'--config={config_path}', f'--workdir={workdir}',
          *(f'--config.{k}={text}' for k, text in overrides))


def resolved_config(module, arg: str, overrides: Sequence[tuple[str, str]],
                    open_fields: Collection[str] = (), check: Check | None = None
                    ) -> dict[str, Any]:
  """The config one run trains with (`module.get_config(arg)` + overrides), as the JSON the loop
  saves in its workdir; `check(config)` may raise on a config that cannot train.

  Raises:
    ConfigArgError: an override names no field or does not fit it.
  """
  config = loading.get_config(module, arg)
  config.lock()
  loading.apply_overrides(config, overrides, open_fields)
  if check is not None:
    check(config)
  return json.loads(config.to_json_best_effort())


def plan(config_path: str, sweep_dir: str, *, overrides: Sequence[tuple[str, str]] = (),
         only: Mapping[str, Any] | None = None, open_fields: Collection[str] = (),
         last: Sequence[tuple[str, str]] = (), check: Check | None = None,
         python: str = sys.executable) -> list[Run]:
  """The runs of a config file's grid (`sweep()`), each with its workdir under `sweep_dir`.

  Args:
    config_path: `file.py[:arg]`; `get_config(arg)` is every run's base.
    sweep_dir: the runs' parent directory.
    overrides: (key, text) set on every run before the point's own, e.g. from the command line.
    only: keep the points with these values (see `grid.matches`); runs they refer to are kept too.
    open_fields: config fields whose keys are free (see `config.loading`).
    last: (key, text) set after the point's own (e.g. a dry run's tiny sizes).
    check: raises ValueError/TypeError for a run's config that cannot train (e.g. method options
      the method does not have); the error names the run.
    python: interpreter of the commands.

  Raises:
    AttributeError: the config file has no `sweep()`.
    ConfigArgError: a grid key the config does not have.
  """
  module = loading.load_config_module(config_path)
  if not hasattr(module, 'sweep'):
    raise AttributeError(f'{config_path} defines no sweep(); sweepable configs return their grid '
                         '(a list of dicts of config overrides) from sweep().')
  _, arg = loading.split_config_path(config_path)
  sweep_dir = os.path.abspath(sweep_dir)
  points = grid.expand_grid(module.sweep())
  names = [grid.run_name(point) for point in points]
  by_name = dict(zip(names, points, strict=True))
  keep = set(names)
  if only is not None:
    keep = {name for name, point in by_name.items() if grid.matches(point, only)}
    keep |= {ref for name in list(keep) for value in by_name[name].values()
             for ref in grid.references(value)}
  runs = []
  for name, point in by_name.items():
    if name not in keep:
      continue
    after = tuple(dict.fromkeys(ref for value in point.values() for ref in grid.references(value)))
    unknown = [ref for ref in after if ref not in by_name]
    if unknown:
      raise ValueError(f'Grid point {point} refers to runs {unknown} that are not in the grid.')
    workdir = os.path.join(sweep_dir, name)
    filled = (*overrides,
              *((k, flag_text(grid.fill_sweep_dir(v, sweep_dir))) for k, v in point.items()),
              *last)
    try:
      config = resolved_config(module, arg, filled, open_fields, check)
    except loading.ConfigArgError:
      raise
    except (ValueError, TypeError) as e:
      raise ValueError(f'Run {name} ({point}): {e}') from None
    runs.append(Run(name, point, workdir, train_command(config_path, workdir, filled, python),
                    config, after, filled))
  return runs


def write_plan(runs: Sequence[Run], sweep_dir: str, config_path: str) -> str:
  """Writes `runs.json` (the report reads it to list missing runs); returns its path."""
  os.makedirs(sweep_dir, exist_ok=True)
  path = os.path.join(sweep_dir, RUNS_FILE)
  record = {'config': config_path,
            'runs': [{'name': r.name, 'overrides': r.overrides, 'workdir': r.workdir,
                      'after': list(r.after), 'command': shlex.join(r.command)} for r in runs]}
  with open(path, 'w') as f:
    json.dump(record, f, indent=2, default=repr)
  return path

r"""Sweeps: a config's grid expanded into runs, each its own workdir, launched locally, on Slurm or
printed for any other scheduler.

A sweepable config file (`experiments/configs/<table>.py`) defines `get_config(arg)` (the base run)
and `sweep()`, the grid: a list of dicts of config overrides, dotted keys allowed, e.g.
`{'task': 'rte', 'method': 'houlsby', 'method_options.size': 64, 'learning_rate': 3e-4}`.

Each run is `python -m experiments.train --config=<file>[:<arg>] --workdir=<sweep_dir>/<name>
--config.k=v ...`. Overrides of fields the base config has become `--config.k=v` flags (typed and
checked by ml_collections). Fields it lacks (e.g. `method_options.size`: `method_options` starts
empty, and a locked config refuses new fields) travel in the config argument as `k=v` items, which
the config file applies with `parse_arg` + `apply_overrides` before the config is locked — the
big_vision `get_config('smoke,variant=B/16')` convention.

This module imports only the standard library and ml_collections, so config files can use it.

Example:
  runs = plan('experiments/configs/mini_rotten_tomatoes.py', '/tmp/sweep')
  for run in runs:
    print(shlex.join(run.command))
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections

RESULT_FILE = 'result.json'   # written by `train_and_evaluate` when a run is complete
CONFIG_FILE = 'config.json'   # written by `train_and_evaluate` when a run starts
RUNS_FILE = 'runs.json'       # the sweep's plan: name, overrides, command of every run
LOG_FILE = 'train.log'        # stdout + stderr of a locally launched run

# Short names for the readable part of run names; other keys use their last dotted component.
_ABBREVIATIONS = {
    'learning_rate': 'lr', 'num_epochs': 'ep', 'num_train_steps': 'steps', 'batch_size': 'bs',
    'max_train_examples': 'n', 'max_length': 'len', 'weight_decay': 'wd', 'warmup_ratio': 'wu',
    'eval_every_steps': 'eval', 'checkpoint_every_steps': 'ckpt',
}
_BARE_KEYS = ('task', 'method', 'model')  # shown as their value only


# --------------------------------------------------------------------------------------------
# Config arguments: `smoke,method_options.size=8`.


def parse_value(text: str) -> Any:
  """A Python literal (`8`, `3e-4`, `True`, `('a','b')`) or, failing that, the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_arg(arg: str) -> dict[str, Any]:
  """Parses a config argument `name,key=value,...` into {name: True, key: value}.

  Example:
    >>> parse_arg('smoke,method_options.size=8')
    {'smoke': True, 'method_options.size': 8}
  """
  parsed: dict[str, Any] = {}
  for item in filter(None, (part.strip() for part in (arg or '').split(','))):
    key, sep, value = item.partition('=')
    parsed[key.strip()] = parse_value(value.strip()) if sep else True
  return parsed


def format_arg(items: Mapping[str, Any]) -> str:
  """The inverse of `parse_arg`."""
  parts = []
  for key, value in items.items():
    if value is True and '.' not in key:
      parts.append(key)
    else:
      text = repr(value) if not isinstance(value, str) else value
      if ',' in text:
        raise ValueError(f'Cannot pass {key}={text!r} in a config argument (it holds a comma).')
      parts.append(f'{key}={text}')
  return ','.join(parts)


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys on an (unlocked) config, creating fields of child ConfigDicts as needed.

  Raises:
    KeyError: a top-level field the config does not have (naming the valid ones).
  """
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for i, part in enumerate(parents):
      if part not in node:
        raise KeyError(f'Config has no field {".".join(parents[:i + 1])!r} (from {key!r}); '
                       f'fields: {sorted(node.keys())}.')
      node = node[part]
    if not parents and leaf not in node:
      raise KeyError(f'Config has no field {leaf!r}; fields: {sorted(node.keys())}.')
    if leaf in node and node[leaf] is not None and isinstance(value, int) and isinstance(
        node[leaf], float):
      value = float(value)
    node[leaf] = value
  return config


def arg_overrides(args: Mapping[str, Any]) -> dict[str, Any]:
  """The `k=v` items of a parsed argument that set config fields (dotted or not, not flags)."""
  return {k: v for k, v in args.items() if not (v is True and '.' not in k)}


def flag_names(args: Mapping[str, Any]) -> set[str]:
  """The bare names of a parsed argument (`smoke`)."""
  return {k for k, v in args.items() if v is True and '.' not in k}


# --------------------------------------------------------------------------------------------
# Config files and grids.


def split_config_path(config_path: str) -> tuple[str, str]:
  """`experiments/configs/x.py:smoke` -> ('experiments/configs/x.py', 'smoke')."""
  path, _, arg = config_path.partition(':')
  return path, arg


def load_config_module(config_path: str):
  """Imports a config file (path, with an optional `:arg`, which is ignored here)."""
  path, _ = split_config_path(config_path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'No config file {path!r}.')
  name = 'sweep_config_' + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _canonical(overrides: Mapping[str, Any]) -> str:
  return json.dumps({k: overrides[k] for k in sorted(overrides)}, sort_keys=True, default=repr)


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:g}'
  if isinstance(value, (tuple, list)):
    return '+'.join(_format_value(v) for v in value)
  return str(value)


def run_name(overrides: Mapping[str, Any], hash_length: int = 6) -> str:
  """A readable, stable directory name: the overrides in grid order plus a hash of all of them.

  Example:
    >>> run_name({'task': 'rte', 'method': 'houlsby', 'method_options.size': 64,
    ...           'learning_rate': 3e-4, 'seed': 1})
    'rte_houlsby_size64_lr0.0003_seed1_<6 hex digits>'
  """
  parts = []
  for key, value in overrides.items():
    short = key.split('.')[-1]
    text = _format_value(value)
    if short in _BARE_KEYS:
      text = os.path.basename(text.rstrip('/')) or text
      parts.append(text)
    else:
      parts.append(_ABBREVIATIONS.get(short, short) + text)
  parts = [re.sub(r'[^A-Za-z0-9.+-]+', '-', part).strip('-') for part in parts]
  readable = '_'.join(filter(None, parts))[:120].strip('_')
  digest = hashlib.sha1(_canonical(overrides).encode()).hexdigest()[:hash_length]
  return f'{readable}_{digest}' if readable else digest


def matches(overrides: Mapping[str, Any], only: Mapping[str, Any]) -> bool:
  """Whether a grid point has every `key=value` of `only` (`3e-4` equals `0.0003`)."""
  for key, wanted in only.items():
    if key not in overrides:
      return False
    value = overrides[key]
    if value != wanted and str(value) != str(wanted):
      return False
  return True


def expand_grid(grid: Iterable[Mapping[str, Any]],
                only: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
  """The grid's points (filtered by `only`), checked for duplicates."""
  points, seen = [], {}
  for i, point in enumerate(grid):
    point = dict(point)
    key = _canonical(point)
    if key in seen:
      raise ValueError(f'Grid points {seen[key]} and {i} are the same: {point}.')
    seen[key] = i
    if only is None or matches(point, only):
      points.append(point)
  return points


def product(*axes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Cartesian product of lists of override dicts, merged left to right.

  Example:
    >>> product([{'task': 'rte'}], [{'learning_rate': 1e-4}, {'learning_rate': 1e-3}])
    [{'task': 'rte', 'learning_rate': 0.0001}, {'task': 'rte', 'learning_rate': 0.001}]
  """
  points: list[dict[str, Any]] = [{}]
  for axis in axes:
    points = [{**p, **dict(a)} for p in points for a in axis]
  return points


def sweep_values(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
  """`[{key: v} for v in values]`, for `product`."""
  return [{key: v} for v in values]


# --------------------------------------------------------------------------------------------
# Runs.


@dataclasses.dataclass(frozen=True)
class Run:
  """One grid point: its name, overrides, workdir and the command that trains it."""

  name: str
  overrides: dict[str, Any]
  workdir: str
  command: tuple[str, ...]
  config: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

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
    Fields present on one side only (a field added to the code since) are not compared.
    """
    path = os.path.join(self.workdir, CONFIG_FILE)
    if not self.config or not os.path.exists(path):
      return []
    with open(path) as f:
      saved = json.load(f)
    return sorted(k for k in set(saved) & set(self.config) if saved[k] != self.config[k])


def _flatten_keys(config: ml_collections.ConfigDict, prefix: str = '') -> set[str]:
  keys = set()
  for key, value in config.items():
    keys.add(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      keys |= _flatten_keys(value, prefix + key + '.')
  return keys


def _flag_value(value: Any) -> str:
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  if isinstance(value, float):
    return repr(value)
  return str(value)


def _run_arg(arg: str, overrides: Mapping[str, Any], known_keys: set[str]) -> str:
  extra = {k: v for k, v in overrides.items() if k not in known_keys}
  return ','.join(filter(None, [arg, format_arg(extra)])) if extra else arg


def resolved_config(module, arg: str, overrides: Mapping[str, Any],
                    known_keys: set[str]) -> dict[str, Any]:
  """The config one run trains with, as the JSON the loop saves in its workdir."""
  config = module.get_config(_run_arg(arg, overrides, known_keys))
  apply_overrides(config, {k: v for k, v in overrides.items() if k in known_keys})
  return json.loads(config.to_json_best_effort())


def train_command(config_path: str, workdir: str, overrides: Mapping[str, Any],
                  known_keys: set[str], python: str = sys.executable) -> tuple[str, ...]:
  """The `experiments.train` command of one run (see the module docstring for the split)."""
  path, arg = split_config_path(config_path)
  arg = _run_arg(arg, overrides, known_keys)
  command = [python, '-m', 'experiments.train', f'--config={path}:{arg}' if arg else
             f'--config={path}', f'--workdir={workdir}']
  command += [f'--config.{k}={_flag_value(v)}' for k, v in overrides.items() if k in known_keys]
  return tuple(command)


def plan(config_path: str, sweep_dir: str, only: Mapping[str, Any] | None = None,
         python: str = sys.executable) -> list[Run]:
  """The runs of a config's grid, each with its workdir under `sweep_dir`.

  Raises:
    AttributeError: the config file has no `sweep()`.
  """
  module = load_config_module(config_path)
  if not hasattr(module, 'sweep'):
    raise AttributeError(f'{config_path} defines no sweep(); sweepable configs return their grid '
                         'from sweep().')
  _, arg = split_config_path(config_path)
  known = _flatten_keys(module.get_config(arg))
  sweep_dir = os.path.abspath(sweep_dir)
  runs = []
  for overrides in expand_grid(module.sweep(), only):
    name = run_name(overrides)
    workdir = os.path.join(sweep_dir, name)
    runs.append(Run(name, overrides, workdir,
                    train_command(config_path, workdir, overrides, known, python),
                    resolved_config(module, arg, overrides, known)))
  return runs


def write_plan(runs: Sequence[Run], sweep_dir: str, config_path: str) -> str:
  """Writes `runs.json` (the report reads it to list missing runs); returns its path."""
  os.makedirs(sweep_dir, exist_ok=True)
  path = os.path.join(sweep_dir, RUNS_FILE)
  record = {'config': config_path,
            'runs': [{'name': r.name, 'overrides': r.overrides, 'workdir': r.workdir,
                      'command': shlex.join(r.command)} for r in runs]}
  with open(path, 'w') as f:
    json.dump(record, f, indent=2, default=repr)
  return path


# --------------------------------------------------------------------------------------------
# Launchers.


def print_commands(runs: Sequence[Run], out=None) -> int:
  """Prints one shell command per unfinished run; returns how many were printed."""
  out = out or sys.stdout
  todo = [r for r in runs if not r.finished]
  for run in todo:
    stale = run.stale_fields()
    if stale:
      print(f'# stale: {run.workdir} holds a run whose {", ".join(stale)} differ; delete it '
            'before running:', file=out)
    print(shlex.join(run.command), file=out)
  return len(todo)


def slurm_script(runs: Sequence[Run], sweep_dir: str, *, job_name: str = 'adapters_sweep',
                 sbatch_options: Sequence[str] = ('--gres=gpu:1', '--cpus-per-task=8',
                                                  '--time=24:00:00'),
                 max_parallel: int = 0, workdir: str | None = None) -> tuple[str, str]:
  """Writes an sbatch array script and the runs table it indexes (one array task per run).

  Returns:
    (script path, table path). Submit with `sbatch <script>`; a task whose run already has a
    result exits at once, an interrupted one resumes from its checkpoints.
  """
  slurm_dir = os.path.join(os.path.abspath(sweep_dir), 'slurm')
  os.makedirs(slurm_dir, exist_ok=True)
  table = os.path.join(slurm_dir, 'runs.tsv')
  with open(table, 'w') as f:
    for run in runs:
      f.write(f'{run.workdir}\t{shlex.join(run.command)}\n')
  array = f'0-{len(runs) - 1}' + (f'%{max_parallel}' if max_parallel > 0 else '')
  lines = ['#!/bin/bash', f'#SBATCH --job-name={job_name}', f'#SBATCH --array={array}',
           f'#SBATCH --output={slurm_dir}/%A_%a.out']
  lines += [f'#SBATCH {option}' for option in sbatch_options]
  lines += [
      '# One array task per line of runs.tsv: <workdir> TAB <command>.',
      'set -euo pipefail',
      f'cd {shlex.quote(workdir or os.getcwd())}',
      f'TABLE={shlex.quote(table)}',
      'LINE=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$TABLE")',
      'RUN_DIR=$(printf "%s" "$LINE" | cut -f1)',
      'COMMAND=$(printf "%s" "$LINE" | cut -f2-)',
      f'if [ -f "$RUN_DIR/{RESULT_FILE}" ]; then echo "finished: $RUN_DIR"; exit 0; fi',
      'mkdir -p "$RUN_DIR"',
      'echo "$COMMAND"',
      f'eval "$COMMAND" 2>&1 | tee -a "$RUN_DIR/{LOG_FILE}"',
      '',
  ]
  script = os.path.join(slurm_dir, 'sweep.sbatch')
  with open(script, 'w') as f:
    f.write('\n'.join(lines))
  return script, table


def count_gpus() -> int:
  """GPUs this process may use, without initialising any framework (CUDA_VISIBLE_DEVICES, then
  `nvidia-smi -L`)."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return len([d for d in visible.split(',') if d.strip() and d.strip() != '-1'])
  if shutil.which('nvidia-smi') is None:
    return 0
  try:
    listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(1 for line in listing.stdout.splitlines() if line.startswith('GPU '))


def _gpu_ids() -> list[str]:
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [d.strip() for d in visible.split(',') if d.strip() and d.strip() != '-1']
  return [str(i) for i in range(count_gpus())]


@dataclasses.dataclass
class LocalOutcome:
  """What `run_local` did: run names that were skipped (finished), succeeded, failed (-> rc),
  and stale (their workdir holds a run with another config -> the differing fields; not run)."""

  skipped: list[str] = dataclasses.field(default_factory=list)
  stale: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  succeeded: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, int] = dataclasses.field(default_factory=dict)


def run_local(runs: Sequence[Run], parallel: int = 0, *, cwd: str | None = None,
              env: Mapping[str, str] | None = None, poll_s: float = 1.0,
              log: Callable[[str], None] = print) -> LocalOutcome:
  """Runs the unfinished runs as subprocesses, `parallel` at a time.

  `parallel=0` means one per GPU when there are several, else 1. With GPUs, each process sees one
  (`CUDA_VISIBLE_DEVICES`). Finished runs (result.json present) are skipped; interrupted ones
  resume (the train entry point restores the workdir's latest checkpoint). A failed run is
  reported and the others go on. Each run's output goes to `<workdir>/train.log`.
  """
  gpus = _gpu_ids()
  if parallel <= 0:
    parallel = max(len(gpus), 1)
  outcome = LocalOutcome()
  todo = []
  for run in runs:
    stale = run.stale_fields()
    if stale:
      outcome.stale[run.name] = stale
      log(f'STALE {run.name}: its workdir holds a run whose {", ".join(stale)} differ from the '
          'config now; not run. Delete the workdir to rerun it, or use another --sweep_dir.')
    elif run.finished:
      outcome.skipped.append(run.name)
    else:
      todo.append(run)
  log(f'{len(runs)} runs: {len(outcome.skipped)} finished, {len(outcome.stale)} stale, '
      f'{len(todo)} to run, {parallel} at a time.')
  base_env = dict(os.environ if env is None else env)
  free_slots = list(range(parallel))
  active: dict[subprocess.Popen, tuple[Run, int, float, Any]] = {}
  queue = list(todo)
  done = 0
  while queue or active:
    while queue and free_slots:
      run = queue.pop(0)
      slot = free_slots.pop(0)
      run_env = dict(base_env)
      if len(gpus) > 1:
        run_env['CUDA_VISIBLE_DEVICES'] = gpus[slot % len(gpus)]
      os.makedirs(run.workdir, exist_ok=True)
      log_file = open(os.path.join(run.workdir, LOG_FILE), 'a')  # noqa: SIM115 closed on exit
      log_file.write(f'$ {shlex.join(run.command)}\n')
      log_file.flush()
      resumed = ' (resuming)' if run.started else ''
      log(f'start {run.name}{resumed}')
      process = subprocess.Popen(run.command, cwd=cwd, env=run_env, stdout=log_file,
                                 stderr=subprocess.STDOUT)
      active[process] = (run, slot, time.time(), log_file)
    time.sleep(poll_s if active else 0)
    for process in [p for p in active if p.poll() is not None]:
      run, slot, start, log_file = active.pop(process)
      log_file.close()
      free_slots.append(slot)
      done += 1
      minutes = (time.time() - start) / 60
      if process.returncode == 0 and run.finished:
        outcome.succeeded.append(run.name)
        log(f'done  {run.name} in {minutes:.1f} min [{done}/{len(todo)}]')
      else:
        outcome.failed[run.name] = process.returncode
        log(f'FAILED {run.name} (exit {process.returncode}) after {minutes:.1f} min; see '
            f'{os.path.join(run.workdir, LOG_FILE)} [{done}/{len(todo)}]')
  return outcome

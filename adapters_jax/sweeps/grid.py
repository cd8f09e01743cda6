"""A sweep's grid: points (dicts of config overrides), their run names, filters and references.

A point is `{'task': 'rte', 'method': 'houlsby', 'method_options.size': 64, 'learning_rate': 3e-4}`:
dotted config fields -> values. A point may refer to another point's run directory with
`run_dir(other_point, 'best')`, e.g. a fusion run reading the sweep's own task adapters; the
planner fills in the sweep directory and runs the referenced point first.

Example:
  grid = product([{'task': 'rte'}], sweep_values('learning_rate', (1e-4, 1e-3)))
  names = [run_name(point) for point in expand_grid(grid)]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

SWEEP_DIR = '{sweep_dir}'  # stands for the sweep directory in grid values; see `run_dir`

# Short names for the readable part of run names; other keys use their last dotted component.
_ABBREVIATIONS = {
    'learning_rate': 'lr', 'num_epochs': 'ep', 'num_train_steps': 'steps', 'batch_size': 'bs',
    'max_train_examples': 'n', 'max_length': 'len', 'weight_decay': 'wd', 'warmup_ratio': 'wu',
    'eval_every_steps': 'eval', 'checkpoint_every_steps': 'ckpt',
}
_BARE_KEYS = ('task', 'method', 'model')  # shown as their value only
_SHOWN_ITEMS = 2  # of a tuple value, e.g. a fusion's adapter directories


def _canonical(overrides: Mapping[str, Any]) -> str:
  return json.dumps({k: overrides[k] for k in sorted(overrides)}, sort_keys=True, default=repr)


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:g}'
  if isinstance(value, (tuple, list)):
    shown = '+'.join(_format_value(v) for v in value[:_SHOWN_ITEMS])
    return shown + (f'+{len(value) - _SHOWN_ITEMS}more' if len(value) > _SHOWN_ITEMS else '')
  if isinstance(value, str) and value.startswith(SWEEP_DIR):
    return value[len(SWEEP_DIR):].strip('/').split('/')[0].split('_')[0]  # the run's first part
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


def run_dir(point: Mapping[str, Any], *parts: str) -> str:
  """The directory of `point`'s run (or a path inside it) in whatever sweep plans it.

  Example:
    adapter = {'task': 'rte', 'method': 'pfeiffer'}
    fusion = {'task': 'rte', 'method': 'fusion',
              'method_options.adapter_dirs': (run_dir(adapter, 'best'),)}
  """
  return '/'.join((SWEEP_DIR, run_name(point), *parts))


def references(value: Any) -> list[str]:
  """The run names a grid value refers to with `run_dir`."""
  if isinstance(value, (tuple, list)):
    return [name for item in value for name in references(item)]
  if isinstance(value, str) and value.startswith(SWEEP_DIR + '/'):
    return [value[len(SWEEP_DIR) + 1:].split('/')[0]]
  return []


def fill_sweep_dir(value: Any, sweep_dir: str) -> Any:
  """`value` with `SWEEP_DIR` replaced by the sweep's directory."""
  if isinstance(value, (tuple, list)):
    return type(value)(fill_sweep_dir(item, sweep_dir) for item in value)
  if isinstance(value, str) and value.startswith(SWEEP_DIR):
    return sweep_dir + value[len(SWEEP_DIR):]
  return value


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
  """The grid's points (filtered by `only`), checked for duplicates.

  Raises:
    TypeError: a point that is not a dict of overrides.
    ValueError: two equal points.
  """
  points, seen = [], {}
  for i, point in enumerate(grid):
    if not isinstance(point, Mapping):
      raise TypeError(f'Grid point {i} is {point!r}; sweep() returns dicts of config overrides, '
                      "e.g. {'task': 'rte', 'learning_rate': 3e-4}.")
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

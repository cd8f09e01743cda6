r"""Loading a config: a config file's `get_config(arg)`, then fields set from `key=value` text.

One way to set a config field from text, wherever it comes from: the `--config.a.b=v` flags of the
experiment scripts, the `key=value` items of a config argument (`config.arguments`), the `--only`
filter of sweeps, and sweep grids (whose values are already typed).

Fields come in two kinds:
- fixed fields (`learning_rate`, `local_task.encoding`): the value is converted to the field's
  present type (int, float, bool, str, tuple, dict); a value that does not convert names the field
  and the type it wants. An unknown field names the closest valid ones.
- entries of open fields (`schema.OPEN_FIELDS`: `method_options`, `model_overrides`,
  `local_task.paths`): ConfigDicts whose keys are free (a method's options, a split's file). A new
  key is created; its value is a Python literal (`8`, `0.1`, `()`, `'a'`), or the text itself when
  it is not one (`--config.local_task.paths.train=train.csv`). Option names are checked by whoever
  reads them (`get_method` for method options).

Imports only the standard library and ml_collections, so config files can use it.

Example:
  config = load_config('experiments/configs/glue.py:local')
  config.lock()
  set_field(config, 'local_task.paths.train', 'train.csv', open_fields=('local_task.paths',))
  set_field(config, 'learning_rate', '3e-4')
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import os
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import ml_collections


class ConfigArgError(ValueError):
  """A config argument names no field, or its value does not fit the field."""


def parse_value(text: str) -> Any:
  """A Python literal (`8`, `3e-4`, `True`, `('a','b')`) or, failing that, the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return text


def format_value(value: Any) -> str:
  """The flag text of a value: `set_field` turns it back into the same value."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  if isinstance(value, Mapping):
    return repr(dict(value))
  if isinstance(value, float):
    return repr(value)
  return str(value)


# ---------------------------------------------------------------------------------------------
# Config files.


def split_config_path(config_path: str) -> tuple[str, str]:
  """`experiments/configs/x.py:smoke` -> ('experiments/configs/x.py', 'smoke')."""
  path, _, arg = config_path.partition(':')
  return path, arg


def load_config_module(config_path: str):
  """Imports a config file (a path, with an optional `:arg`, which is ignored here)."""
  path, _ = split_config_path(config_path)
  if not os.path.isfile(path):
    raise ConfigArgError(f'No config file {path!r} (from {config_path!r}); give the path of a '
                         'Python file defining get_config(), e.g. experiments/configs/glue.py.')
  name = 'config_file_' + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(module, arg: str = '') -> ml_collections.ConfigDict:
  """`module.get_config(arg)`, or its default argument when `arg` is empty (unlocked)."""
  return module.get_config(arg) if arg else module.get_config()


def load_config(config_path: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file `path[:arg]` (unlocked)."""
  return get_config(load_config_module(config_path), split_config_path(config_path)[1])


# ---------------------------------------------------------------------------------------------
# Fields.


def flatten_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every dotted field name of a config, parents before children."""
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      keys += flatten_keys(value, prefix + key + '.')
  return keys


def has_field(config: ml_collections.ConfigDict, key: str) -> bool:
  node = config
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def _unknown_field(config: ml_collections.ConfigDict, key: str, node_key: str,
                   node: ml_collections.ConfigDict) -> ConfigArgError:
  """Names the closest fields: siblings of the unknown part, then same-named fields elsewhere."""
  depth = node_key.count('.') + 1 if node_key else 0
  part = key.split('.')[depth]
  prefix = f'{node_key}.' if node_key else ''
  close = [prefix + c for c in difflib.get_close_matches(part, list(node.keys()), n=3, cutoff=0.6)]
  if not close:  # e.g. `encoding` for `local_task.encoding`
    leaves = {k: k.rsplit('.', 1)[-1] for k in flatten_keys(config)}
    close = [k for k, leaf in leaves.items()
             if leaf in difflib.get_close_matches(part, set(leaves.values()), n=3, cutoff=0.8)]
  where = f'{node_key!r}' if node_key else 'the config'
  hint = (f'Did you mean {", ".join(repr(c) for c in close[:3])}?' if close else
          f'Fields of {where}: {", ".join(sorted(node.keys()))}.')
  return ConfigArgError(f'Unknown config field {key!r}. {hint}')


_TYPE_NAMES = {bool: 'a bool (True or False)', int: 'an int', float: 'a float', str: 'a string',
               tuple: "a tuple, e.g. '(\"a\", \"b\")' or '()'",
               dict: "a dict, e.g. \"{'train': 'train.csv'}\""}


def _wrong_type(key: str, kind: type, value: Any) -> ConfigArgError:
  return ConfigArgError(f'Config field {key!r} wants {_TYPE_NAMES[kind]}; got {value!r}.')


def _convert(key: str, present: Any, value: Any) -> Any:
  """`value` (text or typed) as the type of the field's present value."""
  text = value if isinstance(value, str) else None
  if isinstance(present, bool):
    if text is not None:
      lowered = text.strip().lower()
      if lowered in ('true', '1', 'yes'):
        return True
      if lowered in ('false', '0', 'no'):
        return False
    if isinstance(value, bool):
      return value
    raise _wrong_type(key, bool, value)
  if isinstance(present, int):
    parsed = parse_value(text) if text is not None else value
    if isinstance(parsed, int) and not isinstance(parsed, bool):
      return parsed
    raise _wrong_type(key, int, value)
  if isinstance(present, float):
    if text is not None:
      try:
        return float(text)
      except ValueError:
        raise _wrong_type(key, float, value) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    raise _wrong_type(key, float, value)
  if isinstance(present, str):
    if text is not None and text[:1] in '\'"' and isinstance(parse_value(text), str):
      return parse_value(text)  # a quoted string: its contents
    if isinstance(value, str):
      return value
    raise _wrong_type(key, str, value)
  if isinstance(present, (tuple, list)):
    parsed = parse_value(text) if text is not None else value
    if isinstance(parsed, (tuple, list)):
      return tuple(parsed)
    raise _wrong_type(key, tuple, value)
  if isinstance(present, ml_collections.ConfigDict):
    parsed = parse_value(text) if text is not None else value
    if isinstance(parsed, Mapping):
      return ml_collections.ConfigDict(dict(parsed))
    raise _wrong_type(key, dict, value)
  return parse_value(text) if text is not None else value  # None: any literal


def set_field(config: ml_collections.ConfigDict, key: str, value: Any,
              open_fields: Collection[str] = ()) -> Any:
  """Sets the dotted field `key` from text (`'8'`) or a typed value (`8`); returns what was set.

  Works on a locked config: only entries of `open_fields` may be new.

  Raises:
    ConfigArgError: no such field (naming the closest ones), or a value of the wrong type.
  """
  *parents, leaf = key.split('.')
  node, node_key = config, ''
  for part in parents:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise _unknown_field(config, key, node_key, node)
    node = node[part]
    node_key = f'{node_key}.{part}' if node_key else part
  if not isinstance(node, ml_collections.ConfigDict):
    raise ConfigArgError(f'Config field {node_key!r} holds a {type(node).__name__}, not fields; '
                         f'{key!r} cannot be set.')
  is_open = node_key in open_fields
  if leaf in node and not (is_open and not isinstance(node[leaf], ml_collections.ConfigDict)):
    converted = _convert(key, node[leaf], value)
  elif is_open:
    converted = parse_value(value) if isinstance(value, str) else value
    if isinstance(converted, list):
      converted = tuple(converted)
  else:
    raise _unknown_field(config, key, node_key, node)
  if is_open or leaf not in node or isinstance(converted, ml_collections.ConfigDict):
    locked = node.is_locked
    node.unlock()
    try:
      if leaf in node and type(node[leaf]) is not type(converted):
        del node[leaf]  # an open entry may change type (size=8 -> size=None)
      node[leaf] = converted
    finally:
      if locked:
        node.lock()
  else:
    node[leaf] = converted
  return converted


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | Iterable,
                    open_fields: Collection[str] = ()) -> ml_collections.ConfigDict:
  """`set_field` for each (key, value) in order; returns `config`."""
  items = overrides.items() if isinstance(overrides, Mapping) else overrides
  for key, value in items:
    set_field(config, key, value, open_fields)
  return config

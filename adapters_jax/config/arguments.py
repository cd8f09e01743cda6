"""The argument of a config file (`--config=file.py:ARG`): one parser for every config file.

An argument is comma-separated parts, each one of:
- `smoke`: shrink the run to seconds (`schema.SMOKE`), for tests;
- `key=value`: set any field (dotted, e.g. `method_options.size=8`), typed as `--config.key=value`
  is, after the config file's own values and the shrink;
- a row: one of the names the config file declares (a task, a stage of a table, a size), at most
  one.
Commas inside brackets or quotes do not split (`method_options.train_also=('a','b')`).

Example (a config file):
  ROWS = ('adapter-rte', 'fusion-rte')

  def get_config(arg=''):
    args = parse_config_arg(arg, ROWS, default_row='adapter-rte')
    config = run_config()
    config.task = args.row.partition('-')[2]
    return args.apply(config, num_train_steps=6)   # smoke (if asked, with a change), then items

`parse_config_arg('fusion-rte,smoke,learning_rate=3e-4', ROWS)` ->
ConfigArg(row='fusion-rte', smoke=True, items=(('learning_rate', 0.0003),)).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection
from typing import Any

import ml_collections

from adapters_jax.config import loading, schema

SMOKE = 'smoke'
_KEY = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*')
_PAIRS = {'(': ')', '[': ']', '{': '}'}


@dataclasses.dataclass(frozen=True)
class ConfigArg:
  """A parsed config argument: the row it names ('' for none), whether to shrink the run, and the
  key=value items in the order given (values as Python literals, or text)."""

  row: str = ''
  smoke: bool = False
  items: tuple[tuple[str, Any], ...] = ()

  def apply(self, config: ml_collections.ConfigDict, **smoke_changes) -> ml_collections.ConfigDict:
    """`schema.smoke(config, **smoke_changes)` when asked, then the items; returns `config`.

    Raises:
      loading.ConfigArgError: an item names no field (naming the closest ones) or does not fit it.
    """
    if self.smoke:
      schema.smoke(config, **smoke_changes)
    return loading.apply_overrides(config, self.items, schema.OPEN_FIELDS)


def split_parts(text: str) -> list[str]:
  """`text` split at the commas outside brackets and quotes, parts stripped, empty ones dropped."""
  parts, current, closers, quote = [], [], [], ''
  for char in text:
    if quote:
      quote = '' if char == quote else quote
    elif char in '\'"':
      quote = char
    elif char in _PAIRS:
      closers.append(_PAIRS[char])
    elif closers and char == closers[-1]:
      closers.pop()
    elif char == ',' and not closers:
      parts.append(''.join(current))
      current = []
      continue
    current.append(char)
  parts.append(''.join(current))
  return [part.strip() for part in parts if part.strip()]


def _usage(rows: Collection[str]) -> str:
  row_text = f'one row of {", ".join(repr(r) for r in rows)}; ' if rows else ''
  return (f'valid parts, separated by commas: {row_text}{SMOKE!r} (a run of seconds, for tests); '
          "key=value for any field (e.g. 'learning_rate=3e-4')")


def parse_config_arg(arg: str, rows: Collection[str] = (), default_row: str = '') -> ConfigArg:
  """Parses a config file's argument (see the module docstring).

  Args:
    arg: the text after `:` in `--config=file.py:ARG` ('' for none).
    rows: the row names the config file declares; empty when it has none.
    default_row: the row when the argument names none.

  Raises:
    ValueError: a part that is no row, `smoke` or key=value, or two rows; the message lists what is
      valid.
  """
  row, smoke, items = '', False, []
  for part in split_parts(arg or ''):
    key, sep, value = part.partition('=')
    key = key.strip()
    if sep and _KEY.fullmatch(key):
      items.append((key, loading.parse_value(value.strip())))
    elif part == SMOKE:
      smoke = True
    elif part in rows and not row:
      row = part
    else:
      why = f'two rows ({row!r}, {part!r})' if part in rows else f'{part!r} is not understood'
      raise ValueError(f'Config argument {arg!r}: {why}; {_usage(rows)}.')
  return ConfigArg(row or default_row, smoke, tuple(items))


def parse_items(text: str) -> dict[str, Any]:
  """`key=value,...` (e.g. a sweep's `--only`) as {key: value}, values as Python literals or text.

  Raises:
    ValueError: a part that is not key=value.
  """
  parsed = parse_config_arg(text)
  if parsed.smoke:
    raise ValueError(f'{text!r}: {SMOKE!r} is not key=value; give items such as task=rte.')
  return dict(parsed.items)

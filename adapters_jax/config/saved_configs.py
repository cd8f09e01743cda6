"""A workdir's saved config against the schema: the fields that differ from a run's config now
(`differing_fields`), and the saved config with the fields added since (`with_defaults`).

A workdir records its run's config as JSON (`config.json`). A field added to `schema.run_config()`
since is missing there; the run it holds ran with that field's default behaviour, so a missing field
counts as its schema default. A missing field whose value now is not the default differs, as does
a field the schema no longer has. Open fields (`schema.OPEN_FIELDS`) are compared whole: their keys
have no defaults.

Example:
  differing_fields({'seed': 0}, {'seed': 0, 'lm': {'pack': False}})  # [] (`lm.pack`'s default)
  differing_fields({'seed': 0}, {'seed': 0, 'lm': {'pack': True}})   # ['lm.pack']
  ml_collections.ConfigDict(with_defaults(saved))  # every field a reader reads `config.x`
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from adapters_jax.config import schema

_MISSING = object()


def flatten(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{dotted field: value} of a config's JSON; open fields stay whole (a dict each)."""
  flat = {}
  for key, value in config.items():
    name = prefix + key
    if isinstance(value, Mapping) and name not in schema.OPEN_FIELDS:
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def schema_defaults() -> dict[str, Any]:
  """The schema's defaults as flattened JSON (tuples as lists, as `config.json` holds them)."""
  return flatten(json.loads(schema.run_config().to_json_best_effort()))


def differing_fields(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """The dotted fields whose value differs between a saved config and the current one (both as
  JSON); a field missing from `saved` counts as its schema default. Sorted."""
  saved_flat, current_flat, defaults = flatten(saved), flatten(current), schema_defaults()
  differ = []
  for name in sorted(set(saved_flat) | set(current_flat)):
    was = saved_flat.get(name, defaults.get(name, _MISSING))
    if was != current_flat.get(name, _MISSING):
      differ.append(name)
  return differ


def with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
  """A saved config (JSON) with every schema field it lacks at its default, nested as saved; its own
  values, open-field entries and fields the schema no longer has are kept."""
  defaults = json.loads(schema.run_config().to_json_best_effort())

  def fill(default: Mapping[str, Any], have: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    merged = dict(have)
    for key, value in default.items():
      if key not in have:
        merged[key] = value
      elif (isinstance(value, Mapping) and isinstance(have[key], Mapping)
            and prefix + key not in schema.OPEN_FIELDS):
        merged[key] = fill(value, have[key], prefix + key + '.')
    return merged

  return fill(defaults, saved, '')

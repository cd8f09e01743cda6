"""A workdir's run records: `config.json` (which run this is) and `result.json` (it finished).

`config.json` is written once the run has taken its first step, so a run that fails before that (a
wrong column, a typo in the model name) leaves the workdir free for the corrected command. A rerun
on a workdir must use the same config; a field missing from the saved `config.json` (added to
`config.schema` since) counts as its schema default (`config.saved_configs`). `result.json` is written
last and atomically: a workdir that has it holds a finished run, which a rerun reports without
touching any file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from adapters_jax.checkpoint import disk_full
from adapters_jax.config.saved_configs import differing_fields

CONFIG_FILE = 'config.json'
RESULT_FILE = 'result.json'


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as the JSON `config.json` holds (tuples as lists)."""
  return json.loads(config.to_json_best_effort())


def check_config(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Whether `workdir` already holds this config's run (fields missing from its saved config at
  their schema default count as equal).

  Raises:
    ValueError: the workdir holds a run with another config (naming the differing fields).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    saved = json.load(f)
  differ = differing_fields(saved, as_json(config))
  if differ:
    raise ValueError(f'{workdir} holds a run with another config (fields {differ} differ); '
                     'use a new --workdir, or the same config to resume.')
  return True


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the run's config (process 0; atomic)."""
  if jax.process_index() == 0 and not check_config(config, workdir):
    _atomic_json(os.path.join(workdir, CONFIG_FILE), as_json(config))


def finished_result(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """The result of a finished run of `config` in `workdir`, or None when it has not finished."""
  path = os.path.join(workdir, RESULT_FILE)
  if not check_config(config, workdir) or not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_result(result: dict[str, Any], workdir: str) -> None:
  """Writes result.json (process 0; atomic): the last file of a run."""
  if jax.process_index() == 0:
    _atomic_json(os.path.join(workdir, RESULT_FILE), result)


def _atomic_json(path: str, value: Any) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  text = json.dumps(value, indent=2, sort_keys=True)
  with disk_full.reporting(path, len(text), partial=lambda: [tmp]), open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)

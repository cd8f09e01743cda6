"""A sweep's dry run: every run's config built on a small stand-in model, a smoke run each.

Runs that build the same program (same task, method, method options, model fields; differing only
in learning rate, seed, epochs, batch size or schedule) share one dry run. Each runs through
`train_and_evaluate`, the function `experiments.train` calls, with the plan's `last` overrides
shrinking it (`dry_run_overrides`: a stand-in model, and `config.schema.SMOKE`, the shrink of the
`smoke` config argument: two steps on a few examples),
so a wrong option name, a task that does not load or a method that does not splice shows up in
seconds instead of hours into a cluster job. Runs that read other runs (fusion) go after them and
read their dry-run checkpoints. Tables of T5 runs need a T5 stand-in:
`stand_in_model(STAND_IN_T5, directory)` writes a small random one (`models.t5_random`) with the
packaged MiniLM tokenizer, wide enough for reduction factors 8-32 with Compacter's n = 4 and
PHM-Adapter's n = 12.

Example:
  runs = plan(config_path, '/tmp/dry', last=dry_run_overrides('minilm-l6'))
  outcome = dry_run(config_path, runs, train_and_evaluate, open_fields=schema.OPEN_FIELDS)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Sequence
from typing import Any

import ml_collections

from adapters_jax.config import loading, schema
from adapters_jax.sweeps.launchers import waves
from adapters_jax.sweeps.plan import Run, flag_text

# Fields that change what is built (the model, its head, the adapter, the data); two runs equal on
# these build the same program.
PROGRAM_FIELDS = ('model', 'model_overrides', 'dtype', 'remat', 'scan_layers', 'task', 'task_kind',
                  'local_task', 'split_scheme', 'data_dir', 'method', 'method_options',
                  'adapter_drop_layers', 'adapter_name', 'train_head')

_MESSAGE_CHARS = 600  # of an error in the log line

STAND_IN_MODEL = 'minilm-l6'  # the default stand-in: small, packaged
STAND_IN_T5 = 'random-t5'  # the name that asks `stand_in_model` for a random T5
# d_model 384: 384 / 32 = 12 is still a multiple of PHM-Adapter's n = 12 (and Compacter's n = 4).
STAND_IN_T5_FIELDS = dict(d_model=384, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2,
                          num_heads=4, dropout_rate=0.0, feed_forward_proj='relu',
                          tie_word_embeddings=True)

TrainFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]


@dataclasses.dataclass
class DryRunOutcome:
  """Per dry-run run: `passed` name -> how many planned runs it stands for; `failed` name -> the
  error; `blocked` name -> the failed run it reads."""

  passed: dict[str, int] = dataclasses.field(default_factory=dict)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  blocked: dict[str, str] = dataclasses.field(default_factory=dict)


def stand_in_model(name: str, directory: str) -> str:
  """The dry run's model: `name` itself, or for `STAND_IN_T5` a random T5 written to `directory`."""
  if name != STAND_IN_T5:
    return name
  # Lazily: planning a sweep does not load JAX.
  from adapters_jax.models import resolve_checkpoint_dir
  from adapters_jax.models.t5_random import write_random_t5

  return str(write_random_t5(directory, tokenizer_dir=resolve_checkpoint_dir('minilm-l6'),
                             **STAND_IN_T5_FIELDS))


def dry_run_overrides(model: str) -> list[tuple[str, str]]:
  """The (key, text) flags a dry run sets after each run's own: `schema.SMOKE` on `model`."""
  return [(k, flag_text(v)) for k, v in {**schema.SMOKE, 'model': model}.items()]


def program_key(run: Run) -> str:
  return json.dumps({k: run.config.get(k) for k in PROGRAM_FIELDS}, sort_keys=True, default=repr)


def representatives(runs: Sequence[Run]) -> tuple[list[Run], dict[str, int]]:
  """One run per program, plus every run one of those reads; and how many runs each stands for."""
  by_name = {run.name: run for run in runs}
  first: dict[str, Run] = {}
  count: dict[str, int] = {}
  for run in runs:
    key = program_key(run)
    first.setdefault(key, run)
    count[first[key].name] = count.get(first[key].name, 0) + 1
  needed = {run.name for run in first.values()}
  stack = list(needed)
  while stack:
    for name in by_name[stack.pop()].after:
      if name not in needed:
        needed.add(name)
        stack.append(name)
  return [run for run in runs if run.name in needed], count


def dry_run(config_path: str, runs: Sequence[Run], train_fn: TrainFn, *,
            open_fields: Collection[str] = (),
            log: Callable[[str], None] = print) -> DryRunOutcome:
  """Builds and trains (as `train_fn(config, workdir)`) one run per program; see the module doc.

  `runs` come from `plan(..., last=<dry-run overrides>)` with a sweep directory of their own.
  """
  module = loading.load_config_module(config_path)
  _, arg = loading.split_config_path(config_path)
  chosen, count = representatives(runs)
  log(f'dry run: {len(runs)} runs, {len(count)} distinct programs; {len(chosen)} to build.')
  outcome = DryRunOutcome()
  for wave in waves(chosen):
    for run in wave:
      bad = next((n for n in run.after if n in outcome.failed or n in outcome.blocked), None)
      if bad is not None:
        outcome.blocked[run.name] = bad
        log(f'BLOCKED {run.name}: it reads {bad}, which failed.')
        continue
      try:
        config = loading.get_config(module, arg)
        config.lock()
        loading.apply_overrides(config, run.flags, open_fields)
        train_fn(config, run.workdir)
      except Exception as e:  # noqa: BLE001 every failure is reported and the others go on
        message = ' '.join(f'{type(e).__name__}: {e}'.split())
        message = message if len(message) <= _MESSAGE_CHARS else message[:_MESSAGE_CHARS] + ' ...'
        outcome.failed[run.name] = message
        log(f'FAILED {run.name}: {message}')
        continue
      outcome.passed[run.name] = count.get(run.name, 0)
      log(f'ok     {run.name} (stands for {count.get(run.name, 0)} runs)')
  return outcome

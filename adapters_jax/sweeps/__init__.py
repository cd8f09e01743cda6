r"""Sweeps: a config's grid expanded into runs, each its own workdir, launched locally (one per
device), on Slurm or printed for any other scheduler.

A sweepable config file (`experiments/configs/<table>.py`) defines `get_config(arg)` (the base run)
and `sweep()`, the grid: a list of dicts of config overrides, dotted keys allowed, e.g.
`{'task': 'rte', 'method': 'houlsby', 'method_options.size': 64, 'learning_rate': 3e-4}`. Each run
is `python -m experiments.train --config=<file>[:<arg>] --workdir=<sweep_dir>/<name> --config.k=v
...` (its flags are read by `adapters_jax.config.loading`).

- `grid`: run names, filters, products, references between runs (`run_dir`).
- `plan`: `Run`s with their commands and resolved configs; `runs.json`.
- `launchers`: `print` and `slurm` (waves for runs that read other runs).
- `local`: subprocesses on this host, one per device.
- `dry_run`: every run built on a stand-in model, a smoke run (two steps) per distinct program.
- `vmap`: the runs of a group (equal but for learning rate and seed) as one vmapped program.

Example:
  runs = plan('experiments/configs/mini_rotten_tomatoes.py', '/tmp/sweep',
              open_fields=('method_options',))
  print_commands(runs)
"""

from adapters_jax.sweeps.dry_run import (
  PROGRAM_FIELDS,
  STAND_IN_MODEL,
  STAND_IN_T5,
  DryRunOutcome,
  dry_run,
  dry_run_overrides,
  representatives,
  stand_in_model,
)
from adapters_jax.sweeps.grid import (
  SWEEP_DIR,
  expand_grid,
  matches,
  product,
  references,
  run_dir,
  run_name,
  sweep_values,
)
from adapters_jax.sweeps.launchers import print_commands, slurm_script, waves
from adapters_jax.sweeps.local import (
  Devices,
  LocalOutcome,
  count_gpus,
  detect_devices,
  run_local,
  slots,
)
from adapters_jax.sweeps.plan import (
  CONFIG_FILE,
  LOG_FILE,
  RESULT_FILE,
  RUNS_FILE,
  Run,
  flag_text,
  plan,
  resolved_config,
  train_command,
  write_plan,
)
from adapters_jax.sweeps.vmap_launcher import VmapOutcome, group_runs, run_vmapped

__all__ = [
    'CONFIG_FILE', 'Devices', 'DryRunOutcome', 'LOG_FILE', 'LocalOutcome', 'PROGRAM_FIELDS',
    'RESULT_FILE', 'RUNS_FILE', 'Run', 'STAND_IN_MODEL', 'STAND_IN_T5', 'SWEEP_DIR', 'VmapOutcome',
    'count_gpus', 'detect_devices', 'dry_run', 'dry_run_overrides', 'expand_grid', 'flag_text',
    'group_runs', 'matches', 'plan', 'print_commands', 'product', 'references', 'representatives',
    'resolved_config', 'run_dir', 'run_local', 'run_name', 'run_vmapped', 'slots', 'slurm_script',
    'stand_in_model', 'sweep_values', 'train_command', 'waves', 'write_plan',
]

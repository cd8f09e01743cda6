"""Launchers that hand runs to someone else: one shell command per run, or Slurm array jobs.

Runs that read other runs (`Run.after`, e.g. fusion over the sweep's task adapters) come in waves:
a run's wave is one more than the latest of the runs it reads. `print` prints wave by wave;
`slurm` writes one array job per wave and a `submit.sh` chaining them with `--dependency=afterok`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

from adapters_jax.sweeps.plan import LOG_FILE, RESULT_FILE, Run


def waves(runs: Sequence[Run]) -> list[list[Run]]:
  """Runs grouped so that every run comes after the runs it reads (which must be in `runs`).

  Raises:
    ValueError: a run reads a run that is not planned, or runs read each other in a cycle.
  """
  names = {run.name for run in runs}
  level: dict[str, int] = {}
  pending = list(runs)
  while pending:
    progressed = []
    for run in pending:
      missing = [n for n in run.after if n not in names]
      if missing:
        raise ValueError(f'Run {run.name} reads runs {missing} that are not planned.')
      if all(n in level for n in run.after):
        level[run.name] = 1 + max((level[n] for n in run.after), default=-1)
        progressed.append(run)
    if not progressed:
      raise ValueError(f'Runs read each other in a cycle: {[r.name for r in pending]}.')
    pending = [r for r in pending if r not in progressed]
  grouped = [[] for _ in range(max(level.values(), default=-1) + 1)]
  for run in runs:
    grouped[level[run.name]].append(run)
  return grouped


def print_commands(runs: Sequence[Run], out=None) -> int:
  """Prints one shell command per unfinished run, wave by wave; returns how many were printed."""
  out = out or sys.stdout
  printed = 0
  for number, wave in enumerate(waves(runs)):
    todo = [r for r in wave if not r.finished]
    if number and todo:
      print(f'# after the runs above (they read their results): wave {number}', file=out)
    for run in todo:
      stale = run.stale_fields()
      if stale:
        print(f'# stale: {run.workdir} holds a run whose {", ".join(stale)} differ; delete it '
              'before running:', file=out)
      print(shlex.join(run.command), file=out)
    printed += len(todo)
  return printed


def _array_script(runs: Sequence[Run], slurm_dir: str, suffix: str, job_name: str,
                  sbatch_options: Sequence[str], max_parallel: int, workdir: str) -> tuple[str, str]:
  table = os.path.join(slurm_dir, f'runs{suffix}.tsv')
  with open(table, 'w') as f:
    for run in runs:
      f.write(f'{run.workdir}\t{shlex.join(run.command)}\n')
  array = f'0-{len(runs) - 1}' + (f'%{max_parallel}' if max_parallel > 0 else '')
  lines = ['#!/bin/bash', f'#SBATCH --job-name={job_name}', f'#SBATCH --array={array}',
           f'#SBATCH --output={slurm_dir}/%A_%a.out']
  lines += [f'#SBATCH {option}' for option in sbatch_options]
  lines += [
      f'# One array task per line of {os.path.basename(table)}: <workdir> TAB <command>.',
      'set -euo pipefail',
      f'cd {shlex.quote(workdir)}',
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
  script = os.path.join(slurm_dir, f'sweep{suffix}.sbatch')
  with open(script, 'w') as f:
    f.write('\n'.join(lines))
  return script, table


def slurm_script(runs: Sequence[Run], sweep_dir: str, *, job_name: str = 'adapters_sweep',
                 sbatch_options: Sequence[str] = ('--gres=gpu:1', '--cpus-per-task=8',
                                                  '--time=24:00:00'),
                 max_parallel: int = 0, workdir: str | None = None) -> tuple[str, str]:
  """Writes an sbatch array script per wave and the runs table each indexes (one task per run).

  Returns:
    (what to submit, the first wave's table). With one wave that is `sbatch <script>`; with
    several it is `bash submit.sh`, which submits each wave after the previous one succeeded. A
    task whose run already has a result exits at once, an interrupted one resumes.
  """
  slurm_dir = os.path.join(os.path.abspath(sweep_dir), 'slurm')
  os.makedirs(slurm_dir, exist_ok=True)
  workdir = workdir or os.getcwd()
  scripts = [_array_script(wave, slurm_dir, f'_{i}' if i else '', job_name, sbatch_options,
                           max_parallel, workdir)
             for i, wave in enumerate(waves(runs))]
  if len(scripts) == 1:
    return scripts[0]
  lines = ['#!/bin/bash', '# Submits each wave of runs after the previous one succeeded.',
           'set -euo pipefail', f'JOB=$(sbatch --parsable {shlex.quote(scripts[0][0])})',
           'echo "wave 0: job $JOB"']
  for i, (script, _) in enumerate(scripts[1:], 1):
    lines += [f'JOB=$(sbatch --parsable --dependency=afterok:$JOB {shlex.quote(script)})',
              f'echo "wave {i}: job $JOB"']
  submit = os.path.join(slurm_dir, 'submit.sh')
  with open(submit, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return submit, scripts[0][1]

r"""Expands a config's grid (`sweep()`) into runs and launches them.

  python -m experiments.sweep --config=experiments/configs/mini_rotten_tomatoes.py \
      --sweep_dir=workdirs/mini_rotten_tomatoes --launcher=local
  python -m experiments.sweep --config=experiments/configs/houlsby_glue.py --sweep_dir=sweeps/houlsby \
      --launcher=slurm --only=task=rte
  python -m experiments.sweep --config=experiments/configs/lora_glue.py --sweep_dir=sweeps/lora \
      --launcher=print > commands.sh

Each run gets its own workdir under --sweep_dir, named from its overrides plus a short hash.
`--config.KEY=VALUE` flags apply to every run (before the grid's own values).
Launchers: `local` runs `experiments.train` subprocesses, one per GPU at a time, each seeing only
its GPU (without GPUs: --parallel at a time, default 1; on a TPU host one at a time); `slurm`
writes sbatch array scripts and their runs tables; `print` prints one command per unfinished run.
Runs that read other runs (fusion over the sweep's adapters) start after them. Rerunning skips
finished runs (result.json) and resumes interrupted ones; a failed run is reported and the others
go on (exit status 1 at the end).
"""

import os
import sys

from absl import app, flags

from adapters_jax import config_args, sweeps
from experiments import config_flag
from experiments.configs.common import OPEN_FIELDS

config_flag.define_config_flag(help_string='Sweepable config file, with an optional :arg; '
                               '--config.KEY=VALUE applies to every run.')
flags.DEFINE_string('sweep_dir', None, 'Directory that holds one workdir per run.')
flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'print'], 'How to run the grid.')
flags.DEFINE_integer('parallel', 0, 'local: runs at a time (0: one per GPU, or 1; at most one '
                     'per GPU); slurm: the array throttle (0: no limit).')
flags.DEFINE_string('only', '', 'Keep the grid points with these overrides: key=value,...')
flags.DEFINE_multi_string('sbatch', ['--gres=gpu:1', '--cpus-per-task=8', '--time=24:00:00'],
                          'slurm: #SBATCH options (repeat the flag).')
flags.DEFINE_string('python', sys.executable, 'Python interpreter of the runs.')
flags.mark_flags_as_required(['config', 'sweep_dir'])
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_path = FLAGS['config'].config_path
  only = config_args.parse_arg(FLAGS.only) if FLAGS.only else None
  try:
    runs = sweeps.plan(config_path, FLAGS.sweep_dir, overrides=FLAGS['config'].overrides,
                       only=only, open_fields=OPEN_FIELDS, python=FLAGS.python)
  except (AttributeError, TypeError, ValueError) as e:  # no sweep(), a bad grid point or key
    raise app.UsageError(str(e)) from None
  if not runs:
    raise app.UsageError(f'No grid point of {config_path} matches --only={FLAGS.only}.')
  sweeps.write_plan(runs, FLAGS.sweep_dir, config_path)
  finished = sum(r.finished for r in runs)

  if FLAGS.launcher == 'print':
    printed = sweeps.print_commands(runs)
    print(f'# {printed} commands; {finished} finished runs left out.', file=sys.stderr)
    return 0
  if FLAGS.launcher == 'slurm':
    script, table = sweeps.slurm_script(runs, FLAGS.sweep_dir, sbatch_options=FLAGS.sbatch,
                                        max_parallel=FLAGS.parallel, workdir=ROOT,
                                        job_name=os.path.basename(config_path.split(':')[0])[:-3])
    submit = f'bash {script}' if script.endswith('.sh') else f'sbatch {script}'
    print(f'{len(runs)} runs ({finished} finished) in {table}.\nSubmit with:\n  {submit}\n'
          'Resubmitting later skips finished runs and resumes interrupted ones.')
    return 0
  try:
    outcome = sweeps.run_local(runs, FLAGS.parallel, cwd=ROOT,
                               log=lambda line: print(line, flush=True))
  except ValueError as e:  # --parallel > 1 on a TPU host
    raise app.UsageError(str(e)) from None
  print(f'{len(outcome.succeeded)} runs done, {len(outcome.skipped)} were already finished, '
        f'{len(outcome.failed)} failed.', flush=True)
  if outcome.stale:
    print(f'{len(outcome.stale)} stale runs were not run (see STALE above).')
  if outcome.blocked:
    print(f'{len(outcome.blocked)} runs were not run: they read runs that did not finish.')
  for name, code in outcome.failed.items():
    print(f'  FAILED {name} (exit {code}): {os.path.join(FLAGS.sweep_dir, name, sweeps.LOG_FILE)}')
  return 1 if outcome.failed or outcome.stale or outcome.blocked else 0


if __name__ == '__main__':
  app.run(main)

r"""Expands a config's grid (`sweep()`) into runs and launches them.

  python -m experiments.sweep --config=experiments/configs/mini_rotten_tomatoes.py \
      --sweep_dir=workdirs/mini_rotten_tomatoes --launcher=local
  python -m experiments.sweep --config=experiments/configs/houlsby_glue.py --sweep_dir=sweeps/houlsby \
      --launcher=slurm --only=task=rte
  python -m experiments.sweep --config=experiments/configs/lora_glue.py --sweep_dir=sweeps/lora \
      --launcher=print > commands.sh

Each run gets its own workdir under --sweep_dir, named from its overrides plus a short hash.
Launchers: `local` runs `experiments.train` subprocesses, --parallel at a time (default: one per GPU
when there are several, else 1); `slurm` writes an sbatch array script and its runs table;
`print` prints one command per unfinished run. Rerunning skips finished runs (result.json) and
resumes interrupted ones; a failed run is reported and the others go on (exit status 1 at the end).
"""

import os
import sys

from absl import app, flags

from adapters_jax import sweeps

flags.DEFINE_string('config', None, 'Sweepable config file, with an optional :arg.')
flags.DEFINE_string('sweep_dir', None, 'Directory that holds one workdir per run.')
flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'print'], 'How to run the grid.')
flags.DEFINE_integer('parallel', 0, 'local: runs at a time (0: one per GPU, or 1); slurm: the '
                     'array throttle (0: no limit).')
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
  only = sweeps.parse_arg(FLAGS.only) if FLAGS.only else None
  runs = sweeps.plan(FLAGS.config, FLAGS.sweep_dir, only=only, python=FLAGS.python)
  if not runs:
    raise app.UsageError(f'No grid point of {FLAGS.config} matches --only={FLAGS.only}.')
  sweeps.write_plan(runs, FLAGS.sweep_dir, FLAGS.config)
  finished = sum(r.finished for r in runs)

  if FLAGS.launcher == 'print':
    printed = sweeps.print_commands(runs)
    print(f'# {printed} commands; {finished} finished runs left out.', file=sys.stderr)
    return 0
  if FLAGS.launcher == 'slurm':
    script, table = sweeps.slurm_script(runs, FLAGS.sweep_dir, sbatch_options=FLAGS.sbatch,
                                        max_parallel=FLAGS.parallel, workdir=ROOT,
                                        job_name=os.path.basename(FLAGS.config.split(':')[0])[:-3])
    print(f'{len(runs)} runs ({finished} finished) in {table}.\nSubmit with:\n  sbatch {script}\n'
          'Resubmitting later skips finished runs and resumes interrupted ones.')
    return 0
  outcome = sweeps.run_local(runs, FLAGS.parallel, cwd=ROOT,
                             log=lambda line: print(line, flush=True))
  print(f'{len(outcome.succeeded)} runs done, {len(outcome.skipped)} were already finished, '
        f'{len(outcome.failed)} failed.', flush=True)
  if outcome.stale:
    print(f'{len(outcome.stale)} stale runs were not run (see STALE above).')
  for name, code in outcome.failed.items():
    print(f'  FAILED {name} (exit {code}): {os.path.join(FLAGS.sweep_dir, name, sweeps.LOG_FILE)}')
  return 1 if outcome.failed or outcome.stale else 0


if __name__ == '__main__':
  app.run(main)

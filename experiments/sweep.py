r"""Expands a config's grid (`sweep()`) into runs and launches them.

  python -m experiments.sweep --config=experiments/configs/mini_rotten_tomatoes.py \
      --sweep_dir=workdirs/mini_rotten_tomatoes --launcher=local
  python -m experiments.sweep --config=experiments/configs/houlsby_glue.py --sweep_dir=sweeps/houlsby \
      --launcher=slurm --only=task=rte
  python -m experiments.sweep --config=experiments/configs/lora_glue.py --sweep_dir=sweeps/lora \
      --launcher=print > commands.sh
  python -m experiments.sweep --config=experiments/configs/houlsby_glue.py --sweep_dir=sweeps/houlsby \
      --dry_run          # every run built on a stand-in model, a smoke run per distinct program
  python -m experiments.sweep --config=experiments/configs/mini_rotten_tomatoes.py \
      --sweep_dir=workdirs/mini_rotten_tomatoes --launcher=vmap   # learning rates x seeds as one program

Each run gets its own workdir under --sweep_dir, named from its overrides plus a short hash.
`--config.KEY=VALUE` flags apply to every run (before the grid's own values).
Launchers: `local` runs `experiments.train` subprocesses, one per GPU at a time, each seeing only
its GPU (without GPUs: --parallel at a time, default 1; on a TPU host one at a time); `slurm`
writes sbatch array scripts and their runs tables; `print` prints one command per unfinished run;
`vmap` trains, in this process, the runs that differ only in learning rate and seed as one vmapped
program per group (`adapters_jax.train.vmapped`; at most --vmap_members per program), each run
writing its own workdir as `experiments.train` would.
Runs that read other runs (fusion over the sweep's adapters) start after them. Rerunning skips
finished runs (result.json) and resumes interrupted ones; a failed run is reported and the others
go on (exit status 1 at the end).

`--dry_run` launches nothing: it builds every run on a small stand-in model (`--dry_run_model`) and
trains it as the `smoke` config argument shrinks a run (two steps on a few examples) through
`train_and_evaluate` (what experiments.train runs), once per distinct program (runs differing
only in learning rate, seed or schedule share one), in a temporary directory. It needs the runs'
data (GLUE downloads on first use).
"""

import os
import shutil
import sys
import tempfile

from absl import app, flags, logging

from adapters_jax import sweeps
from adapters_jax.config import arguments, schema
from experiments import compilation_cache, config_flag, entry_point

config_flag.define_config_flag(help_string='Sweepable config file, with an optional :arg; '
                               '--config.KEY=VALUE applies to every run.')
flags.DEFINE_string('sweep_dir', None, 'Directory that holds one workdir per run.')
flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'print', 'vmap'], 'How to run the grid.')
flags.DEFINE_integer('parallel', 0, 'local: runs at a time (0: one per GPU, or 1; at most one '
                     'per GPU); slurm: the array throttle (0: no limit).')
flags.DEFINE_integer('vmap_members', 0, 'vmap: most runs in one program (0: a whole group).')
flags.DEFINE_string('only', '', 'Keep the grid points with these overrides: key=value,...')
flags.DEFINE_multi_string('sbatch', ['--gres=gpu:1', '--cpus-per-task=8', '--time=24:00:00'],
                          'slurm: #SBATCH options (repeat the flag).')
flags.DEFINE_string('python', sys.executable, 'Python interpreter of the runs.')
flags.DEFINE_bool('dry_run', False, 'Launch nothing: build every run on a stand-in model and train '
                  'it for the two steps of a smoke run, once per distinct program.')
flags.DEFINE_string('dry_run_model', sweeps.STAND_IN_MODEL, 'The stand-in model of --dry_run; '
                    f'{sweeps.STAND_IN_T5!r}: a small random T5 (for tables of T5 runs).')
flags.mark_flags_as_required(['config', 'sweep_dir'])
FLAGS = flags.FLAGS
HELD_LOCKS = []  # the sweep directory's lock: referenced so it is held until this process ends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(config_path: str, only) -> int:
  """`--dry_run`: see the module docstring; returns the exit status."""
  from adapters_jax.train.loop import train_and_evaluate  # late: keeps --help and planning fast

  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  root = tempfile.mkdtemp(prefix='dry_run_')
  try:
    model = sweeps.stand_in_model(FLAGS.dry_run_model, os.path.join(root, 'stand_in_model'))
    last = sweeps.dry_run_overrides(model)
    runs = sweeps.plan(config_path, root, overrides=FLAGS['config'].overrides, only=only,
                       open_fields=schema.OPEN_FIELDS, last=last, python=FLAGS.python)
    outcome = sweeps.dry_run(config_path, runs, train_and_evaluate,
                             open_fields=schema.OPEN_FIELDS,
                             log=lambda line: print(line, flush=True))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(f'dry run: {len(outcome.passed)} programs ok ({sum(outcome.passed.values())} runs), '
        f'{len(outcome.failed)} failed, {len(outcome.blocked)} blocked.')
  return 1 if outcome.failed or outcome.blocked else 0


def vmap(config_path: str, runs) -> int:
  """`--launcher=vmap`: see the module docstring; returns the exit status."""
  from adapters_jax.host_memory import reuse_freed_host_memory

  reuse_freed_host_memory()  # before JAX or TensorFlow start their threads
  from adapters_jax.train.vmapped import VMAP_FIELDS, train_group  # late: keeps --help fast

  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO
  from adapters_jax.checkpoint import disk_full
  from adapters_jax.train.stop_signals import RunStoppedError

  disk_full.quiet_library_logs()
  try:
    outcome = sweeps.run_vmapped(config_path, runs, train_group, fields=VMAP_FIELDS,
                                 open_fields=schema.OPEN_FIELDS, max_members=FLAGS.vmap_members,
                                 log=lambda line: print(line, flush=True))
  except RunStoppedError as e:  # SIGTERM or Ctrl-C: the group in flight saved its step
    print(f'{e} (the sweep)', file=sys.stderr, flush=True)
    return e.exit_code
  except disk_full.DiskFullError as e:
    print(f'Cannot go on with the sweep: {e}', file=sys.stderr, flush=True)
    return 1
  print(f'{len(outcome.succeeded)} runs done, {len(outcome.stopped)} stopped on a non-finite '
        f'loss, {len(outcome.skipped)} were already finished, {len(outcome.failed)} failed.',
        flush=True)
  if outcome.stale:
    print(f'{len(outcome.stale)} stale runs were not run (see STALE above).')
  if outcome.blocked:
    print(f'{len(outcome.blocked)} runs were not run: they read runs that did not finish.')
  return 1 if outcome.failed or outcome.stale or outcome.blocked else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  compilation_cache.enable()  # here and, through the environment, in every run it starts
  config_path = FLAGS['config'].config_path
  only = arguments.parse_items(FLAGS.only) if FLAGS.only else None
  if FLAGS.dry_run:
    return dry_run(config_path, only)
  try:
    runs = sweeps.plan(config_path, FLAGS.sweep_dir, overrides=FLAGS['config'].overrides,
                       only=only, open_fields=schema.OPEN_FIELDS,
                       check=config_flag.check_method_options,
                       python=FLAGS.python)
  except (AttributeError, TypeError, ValueError) as e:  # no sweep(), a bad grid point or key
    raise app.UsageError(str(e)) from None
  if not runs:
    raise app.UsageError(f'No grid point of {config_path} matches --only={FLAGS.only}.')
  if FLAGS.launcher in ('local', 'vmap'):  # one launcher per sweep directory, for its lifetime
    from adapters_jax.train.workdir_lock import DirectoryBusyError, DirectoryLock

    try:
      HELD_LOCKS.append(DirectoryLock(FLAGS.sweep_dir, 'sweep').acquire())
    except DirectoryBusyError as e:
      sys.exit(str(e))
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
  if FLAGS.launcher == 'vmap':
    return vmap(config_path, runs)
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
  entry_point.run(main)

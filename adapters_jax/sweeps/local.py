"""The local launcher: a sweep's runs as subprocesses on this host, one per device at a time.

On a host with several GPUs each run process sees one GPU (`CUDA_VISIBLE_DEVICES=<id>`), and a
GPU runs at most one run at a time; without GPUs, `parallel` runs share the CPU. On a TPU host a
run takes every chip (JAX opens them all), so runs go one at a time and `parallel > 1` is refused.
Finished runs (result.json) are skipped, interrupted ones resume (the train entry point restores
the workdir's latest checkpoint), a failed run is reported and the others go on; a run that reads
a failed run (`Run.after`) is not started. Each run's output goes to `<workdir>/train.log`.

The launcher owns its runs: each starts in its own process group (a Ctrl-C in the terminal reaches
the launcher alone) with the parent-death signal set to SIGTERM on Linux, so runs stop (saving
their step) when the launcher dies, even by SIGKILL. A Ctrl-C sends SIGTERM to the active runs and
waits for them to save.
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from adapters_jax.sweeps.plan import LOG_FILE, Run, unfinished_runs


@dataclasses.dataclass(frozen=True)
class Devices:
  """The accelerators of this host: kind 'gpu', 'tpu' or 'cpu', and the ids runs are given."""

  kind: str
  ids: tuple[str, ...] = ()


def _gpu_ids(env: Mapping[str, str]) -> list[str]:
  visible = env.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [d.strip() for d in visible.split(',') if d.strip() and d.strip() != '-1']
  if shutil.which('nvidia-smi') is None:
    return []
  try:
    listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, line in enumerate(
      line for line in listing.stdout.splitlines() if line.startswith('GPU '))]


def count_gpus(env: Mapping[str, str] | None = None) -> int:
  """GPUs this process may use, without initialising any framework (CUDA_VISIBLE_DEVICES, then
  `nvidia-smi -L`)."""
  return len(_gpu_ids(os.environ if env is None else env))


def detect_devices(env: Mapping[str, str] | None = None) -> Devices:
  """GPUs (CUDA_VISIBLE_DEVICES or nvidia-smi), else TPU chips (/dev/accel*, /dev/vfio), else CPU."""
  env = os.environ if env is None else env
  gpus = _gpu_ids(env)
  if gpus:
    return Devices('gpu', tuple(gpus))
  chips = glob.glob('/dev/accel*') or [p for p in glob.glob('/dev/vfio/*')
                                       if os.path.basename(p).isdigit()]
  if chips or env.get('TPU_ACCELERATOR_TYPE'):
    return Devices('tpu', tuple(sorted(chips)))
  return Devices('cpu')


def slots(devices: Devices, parallel: int) -> tuple[list[str | None], str]:
  """The run slots (a device id each, or None on CPU) and a note when `parallel` was changed.

  Raises:
    ValueError: `parallel > 1` on a TPU host.
  """
  if devices.kind == 'tpu':
    if parallel > 1:
      raise ValueError(f'This is a TPU host ({len(devices.ids)} chips): every run takes all '
                       'chips, so runs go one at a time here. Use --parallel=1, or one host per '
                       'run (--launcher=slurm or --launcher=print).')
    return [None], ''
  if devices.kind == 'gpu':
    if parallel > len(devices.ids):
      return list(devices.ids), (f'--parallel={parallel} > {len(devices.ids)} GPUs: one run per '
                                 'GPU at a time.')
    return list(devices.ids[:parallel] if parallel > 0 else devices.ids), ''
  return [None] * max(parallel, 1), ''


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(prctl, parent_pid: int) -> None:
  """In the child before exec: SIGTERM when the launcher dies; stop if it already died."""
  prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
  if os.getppid() != parent_pid:  # it died before prctl: no signal would come
    os._exit(1)


def start_owned(command: Sequence[str], **popen_args) -> subprocess.Popen:
  """Starts `command` in its own process group, to receive SIGTERM when this process dies
  (Linux; elsewhere the process group alone)."""
  preexec = None
  if sys.platform.startswith('linux'):
    # libc is opened here: the child between fork and exec only calls into it (no dlopen locks).
    prctl, parent_pid = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()
    preexec = lambda: _die_with_parent(prctl, parent_pid)  # noqa: E731
  return subprocess.Popen(command, process_group=0, preexec_fn=preexec, **popen_args)  # noqa: PLW1509 nothing but prctl runs there


@dataclasses.dataclass
class LocalOutcome:
  """What `run_local` did: run names that were skipped (finished), succeeded, failed (-> rc),
  stale (their workdir holds a run with another config -> the differing fields; not run) and
  blocked (they read a run that failed or is stale -> its name; not run)."""

  skipped: list[str] = dataclasses.field(default_factory=list)
  stale: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  succeeded: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, int] = dataclasses.field(default_factory=dict)
  blocked: dict[str, str] = dataclasses.field(default_factory=dict)


def run_local(runs: Sequence[Run], parallel: int = 0, *, devices: Devices | None = None,
              cwd: str | None = None, env: Mapping[str, str] | None = None,
              poll_s: float = 1.0, log: Callable[[str], None] = print) -> LocalOutcome:
  """Runs the unfinished runs as subprocesses (see the module docstring).

  Args:
    runs: the plan, in order; a run starts after the runs it reads (`after`) finished.
    parallel: runs at a time; 0 = one per GPU (or 1 without GPUs). At most one per GPU.
    devices: this host's accelerators (default: `detect_devices(env)`).
    cwd, env: of the run processes (env default: this process's).
    poll_s: seconds between checks for finished processes.
    log: receives one line per event.
  """
  base_env = dict(os.environ if env is None else env)
  devices = detect_devices(base_env) if devices is None else devices
  free, note = slots(devices, parallel)
  if note:
    log(note)
  outcome = LocalOutcome()
  todo = unfinished_runs(runs, outcome.skipped, outcome.stale, log)
  log(f'{len(runs)} runs: {len(outcome.skipped)} finished, {len(outcome.stale)} stale, '
      f'{len(todo)} to run, {len(free)} at a time'
      f'{" (one per GPU)" if devices.kind == "gpu" else ""}.')
  done_names = set(outcome.skipped)
  bad_names = set(outcome.stale)
  active: dict[subprocess.Popen, tuple[Run, str | None, float, Any]] = {}
  try:
    _launch(todo, free, active, done_names, bad_names, outcome, cwd, base_env, poll_s, log)
  except KeyboardInterrupt:  # Ctrl-C: the runs save their step and stop, then the launcher
    log(f'Stopping {len(active)} runs (each saves its step; rerun the sweep to resume).')
    for process in active:
      process.send_signal(signal.SIGTERM)
    for process in active:
      process.wait()
    raise
  return outcome


def _launch(todo, free, active, done_names, bad_names, outcome, cwd, base_env, poll_s, log):
  """`run_local`'s loop: starts runs as slots free up until every run ended."""
  queue = list(todo)
  done = 0
  while queue or active:
    for run in list(queue):  # runs that read a failed run never start
      bad = next((n for n in run.after if n in bad_names), None)
      if bad is not None:
        queue.remove(run)
        outcome.blocked[run.name] = bad
        bad_names.add(run.name)
        log(f'BLOCKED {run.name}: it reads {bad}, which did not finish.')
    while free:
      run = next((r for r in queue if all(n in done_names for n in r.after)), None)
      if run is None:
        break
      queue.remove(run)
      device = free.pop(0)
      run_env = dict(base_env)
      if device is not None:
        run_env['CUDA_VISIBLE_DEVICES'] = device
      os.makedirs(run.workdir, exist_ok=True)
      log_file = open(os.path.join(run.workdir, LOG_FILE), 'a')  # noqa: SIM115 closed on exit
      log_file.write(f'$ {shlex.join(run.command)}\n')
      log_file.flush()
      where = f' on GPU {device}' if device is not None else ''
      log(f'start {run.name}{where}{" (resuming)" if run.started else ""}')
      process = start_owned(run.command, cwd=cwd, env=run_env, stdout=log_file,
                            stderr=subprocess.STDOUT)
      active[process] = (run, device, time.time(), log_file)
    if queue and not active:
      stuck = [r.name for r in queue]
      raise RuntimeError(f'Runs {stuck} wait for runs that are not planned.')
    time.sleep(poll_s)
    for process in [p for p in active if p.poll() is not None]:
      run, device, start, log_file = active.pop(process)
      log_file.close()
      free.append(device)
      done += 1
      minutes = (time.time() - start) / 60
      if process.returncode == 0 and run.finished:
        outcome.succeeded.append(run.name)
        done_names.add(run.name)
        log(f'done  {run.name} in {minutes:.1f} min [{done}/{len(todo)}]')
      else:
        outcome.failed[run.name] = process.returncode
        bad_names.add(run.name)
        log(f'FAILED {run.name} (exit {process.returncode}) after {minutes:.1f} min; see '
            f'{os.path.join(run.workdir, LOG_FILE)} [{done}/{len(todo)}]')

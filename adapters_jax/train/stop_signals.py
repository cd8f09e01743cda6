"""Stopping a run cleanly on SIGTERM (preemption: TPU VMs, Slurm) or Ctrl-C (SIGINT).

    with StopSignals() as stop:
      while training:
        step()
        if stop.requested:
          save(); raise RunStoppedError(stop.requested, step, where)

The first signal only sets `requested` (the signal's name): the run finishes its step, saves a
checkpoint there and stops (`RunStoppedError`), and the entry point prints one line and exits with
`RunStoppedError.exit_code` (0 for SIGTERM, the scheduler asked; 130 for Ctrl-C, the shell's code).
A second signal of the same kind acts as it would without this handler (the process ends at once).
Handlers are installed only in the main thread (Python delivers signals there alone).
"""

from __future__ import annotations

import signal
import threading

EXIT_CODES = {'SIGTERM': 0, 'SIGINT': 130}


class RunStoppedError(Exception):
  """A run stopped on a signal after saving a checkpoint at `step`; rerun to resume."""

  def __init__(self, signal_name: str, step: int, checkpoint_dirs: list[str]):
    self.signal_name, self.step, self.checkpoint_dirs = signal_name, step, checkpoint_dirs
    self.exit_code = EXIT_CODES[signal_name]
    super().__init__(f'Stopped by {signal_name} at step {step}; checkpoint saved in '
                     f'{", ".join(checkpoint_dirs)}; rerun the same command to resume')


class StopSignals:
  """Turns SIGTERM and SIGINT into a request the training loop polls (`requested`)."""

  def __init__(self):
    self.requested: str | None = None
    self._previous: dict[int, object] = {}

  def _handle(self, signum, frame) -> None:
    del frame
    self.requested = self.requested or signal.Signals(signum).name
    # A second signal of this kind ends the process as it would have without us.
    signal.signal(signum, self._previous[signum] or signal.SIG_DFL)

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

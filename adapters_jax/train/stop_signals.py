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

On several processes (a multi-host run) a scheduler may signal one host, or all of them at
different moments: `agreed()`, called by every process at the same steps (the loop's record
steps), gathers the requests, so every process stops, and saves, at the same step.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_CODES = {'SIGTERM': 0, 'SIGINT': 130}
_BY_PRIORITY = ('SIGINT', 'SIGTERM')  # when hosts got different signals: the scheduler's wins


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

  def agreed(self) -> str | None:
    """The stop request of all processes (a collective on several: call it on every process at
    the same step); on one process, `requested`."""
    if jax.process_count() == 1:
      return self.requested
    code = _BY_PRIORITY.index(self.requested) + 1 if self.requested else 0
    top = int(np.max(multihost_utils.process_allgather(np.int32(code))))
    if top and not self.requested:
      self.requested = _BY_PRIORITY[top - 1]
    return self.requested

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

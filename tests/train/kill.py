"""Killing a CLI training run mid-run, as a crash would."""

import os
import signal
import subprocess
import time


def kill_once_checkpointed(proc: subprocess.Popen, workdir, step: int, timeout_s: float = 300) -> None:
  """SIGKILLs `proc` as soon as `workdir/checkpoints/<step>` exists (mid-run, between or during
  saves); fails if the run ended first."""
  deadline = time.time() + timeout_s
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(os.path.join(workdir, 'checkpoints', str(step))):
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()

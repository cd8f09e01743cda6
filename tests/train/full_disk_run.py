"""`python -m tests.train.full_disk_run FLAG_FILE <experiments.train flags>`: experiments.train whose
disk is "full" from the moment FLAG_FILE exists.

For machines where the test cannot mount a small tmpfs (not root): every Orbax save, the metrics
append and `result.json` then fail as a full device fails them, with ENOSPC; everything else is the
real CLI.
"""

import builtins
import errno
import os
import runpy
import sys

import orbax.checkpoint as ocp

FLAG_FILE = sys.argv.pop(1)


def _full() -> OSError | None:
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if os.path.exists(FLAG_FILE) else None


def _failing(save):
  def failing_save(*args, **kwargs):
    error = _full()
    if error:
      raise error
    return save(*args, **kwargs)
  return failing_save


ocp.CheckpointManager.save = _failing(ocp.CheckpointManager.save)
ocp.Checkpointer.save = _failing(ocp.Checkpointer.save)
_open = builtins.open


def _open_failing_writes(file, mode='r', *args, **kwargs):
  if any(m in mode for m in 'wa') and str(file).startswith(os.path.dirname(FLAG_FILE)) and _full():
    raise _full()
  return _open(file, mode, *args, **kwargs)


builtins.open = _open_failing_writes
runpy.run_module('experiments.train', run_name='__main__', alter_sys=True)

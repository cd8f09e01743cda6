"""A full disk while writing a run's files: one line naming the path, the bytes needed and what is intact.

Every writer of a run (training checkpoints, `best/` and other adapter checkpoints, `metrics.jsonl`,
TensorBoard, `result.json`, exports) wraps its write in `reporting(path, bytes_needed, partial)`: on
"No space left on device" anywhere in the error's chain (Orbax and TensorStore wrap it in their own
errors, often raised from a background thread), the partial files `partial` names are removed and a
`DiskFullError` says, in one line, where, how much was needed and how much is free. The writes are
atomic (a temporary name, then a rename), so whatever was complete before stays complete; rerunning
the command once space is freed resumes with nothing lost.

    with disk_full.reporting(step_dir, nbytes, partial=lambda: glob.glob(tmp + '*')):
      manager.save(...)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax

_MARKERS = ('No space left on device', "os_error_code='28'", 'Disk quota exceeded')


class DiskFullError(OSError):
  """The device of a run's file is full (or over quota); what was written before is intact.
  `str(error)` is the one-line message."""


def is_disk_full(error: BaseException | None) -> bool:
  """True when `error`, or an error it was raised from or during, is ENOSPC/EDQUOT."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(marker in str(error) for marker in _MARKERS):
      return True
    error = error.__cause__ or error.__context__
  return False


def tree_bytes(tree: Any) -> int:
  """Bytes of the arrays in `tree` (what a checkpoint of it holds, before compression)."""
  return sum(int(getattr(leaf, 'nbytes', 0)) for leaf in jax.tree.leaves(tree))


def free_bytes(path: str | os.PathLike) -> int:
  """Free bytes on the device of `path` (or of its nearest existing parent)."""
  path = os.path.abspath(os.fspath(path))
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


@contextlib.contextmanager
def reporting(path: str | os.PathLike, bytes_needed: int,
              partial: Callable[[], Iterable[str]] = tuple, intact: str = '') -> Iterator[None]:
  """Turns a full disk inside the block into a one-line `DiskFullError`.

  Args:
    path: what the block writes.
    bytes_needed: about how many bytes it writes.
    partial: returns the paths of partial files or directories to remove on failure.
    intact: what the message says is unharmed (e.g. 'the checkpoint at step 40').
  """
  try:
    yield
  except DiskFullError:
    raise  # said already, by an inner write
  except Exception as e:
    if not is_disk_full(e):
      raise
    for leftover in partial():
      if os.path.isdir(leftover):
        shutil.rmtree(leftover, ignore_errors=True)
      elif os.path.exists(leftover):
        os.remove(leftover)
    kept = f'{intact} and every file written before are intact' if intact else \
        'every file written before is intact'
    raise DiskFullError(
        f'no space left on the device of {os.fspath(path)}: writing it needs about '
        f'{bytes_needed:,} bytes and {free_bytes(path):,} are free; {kept} (partial files '
        'removed). Free some space and run the same command again.') from None


class _DropDiskFullRecords(logging.Filter):
  """Drops log records of a full disk (Orbax logs its background threads' errors with their
  tracebacks); `reporting` says it once, in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (is_disk_full(error) or any(m in record.getMessage() for m in _MARKERS))


_FILTER = _DropDiskFullRecords()


def quiet_library_logs() -> None:
  """Keeps Orbax's (absl) logs of a full disk off stderr; idempotent."""
  for name in ('absl', ''):
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
      logger.addFilter(_FILTER)
    for handler in logger.handlers:
      if _FILTER not in handler.filters:
        handler.addFilter(_FILTER)

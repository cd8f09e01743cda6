"""One writer per directory: a run's workdir, a sweep's directory.

    with DirectoryLock(workdir, 'run'):
      ...  # only this process writes here

The lock is `fcntl.flock` on `<directory>/.lock`, held for the holder's lifetime; the file names the
holder (host, pid, start time) so a refused process can say who has it. The kernel releases a flock
when its holder dies, however it dies, so a dead holder's file is simply taken over (with a note
when the file names a pid on this host that no longer runs).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time

LOCK_FILE = '.lock'


class DirectoryBusyError(RuntimeError):
  """Another live process holds the directory's lock."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class DirectoryLock:
  """Holds `<directory>/.lock` while open (a context manager); `what` names the holder's kind."""

  def __init__(self, directory: str, what: str):
    self.directory, self.what = os.path.abspath(directory), what
    self._file = None

  def acquire(self) -> DirectoryLock:
    """Claims the lock (creating the directory).

    Raises:
      DirectoryBusyError: a live process holds it (one line naming host, pid and start time).
    """
    os.makedirs(self.directory, exist_ok=True)
    path = os.path.join(self.directory, LOCK_FILE)
    handle = open(path, 'a+')  # noqa: SIM115 held until release
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or 'another process'
      handle.close()
      raise DirectoryBusyError(
          f'{self.directory} is in use by {holder}; wait for it to end (or stop it) before '
          f'starting this {self.what} again.') from None
    handle.seek(0)
    previous = handle.read().strip()
    fields = dict(item.split('=', 1) for item in previous.split() if '=' in item)
    if (fields.get('host') == socket.gethostname() and fields.get('pid', '').isdigit()
        and int(fields['pid']) != os.getpid() and not _pid_alive(int(fields['pid']))):
      print(f'{path}: its last holder (pid {fields["pid"]}, started {fields.get("started")}) '
            'no longer runs; taking the lock over.', file=sys.stderr, flush=True)
    handle.seek(0)
    handle.truncate()
    started = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    handle.write(f'host={socket.gethostname()} pid={os.getpid()} started={started}\n')
    handle.flush()
    self._file = handle
    return self

  def release(self) -> None:
    """Lets the lock go (the file stays, empty: removing it would race a process opening it)."""
    if self._file is not None:
      self._file.truncate(0)  # a clean exit leaves no holder to report as dead
      self._file.close()  # closing the last descriptor releases the flock
      self._file = None

  def __enter__(self) -> DirectoryLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

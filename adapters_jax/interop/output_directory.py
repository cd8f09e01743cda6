"""Where exports and imports write: a fresh directory, moved into place whole, never mixed with old files.

Every format writes its files into a staging directory beside the target; only when all of them are
written is it renamed to the target. A target that already holds files is refused unless `overwrite`,
which replaces it whole (the old directory is removed only after the new one is in place). So a
directory never holds one run's adapter beside another run's head, and a failed write leaves nothing.

    with staged_directory('exports/rte', overwrite=False) as staging:
      write_files(staging)          # e.g. adapter_config.json + adapter.safetensors
    # exports/rte now holds exactly those files.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator

from adapters_jax.interop.naming import InteropError


def refuse_to_mix(out: str | os.PathLike, *, overwrite: bool) -> pathlib.Path:
  """Checks that `out` can be written: absent, an empty directory, or `overwrite` is set.

  Raises:
    InteropError: `out` is a file, or a non-empty directory and `overwrite` is False.
  """
  out = pathlib.Path(out)
  if out.exists() and not out.is_dir():
    raise InteropError(f'{out} is a file, not a directory; choose another output directory.')
  if out.is_dir() and not overwrite:
    held = sorted(p.name for p in out.iterdir())
    if held:
      shown = ', '.join(held[:3]) + (', ...' if len(held) > 3 else '')
      raise InteropError(f'{out} already holds files ({shown}); choose an empty directory, or replace it '
                         'whole with --overwrite (overwrite=True).')
  return out


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike, *, overwrite: bool) -> Iterator[pathlib.Path]:
  """Yields an empty staging directory beside `out`; on success it becomes `out`.

  Args:
    out: the directory to produce.
    overwrite: replace a non-empty `out` whole; otherwise it is refused (before and after writing).

  Raises:
    InteropError: see `refuse_to_mix`. On any error the staging directory is removed and `out` is
      left as it was.
  """
  out = refuse_to_mix(out, overwrite=overwrite)
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out.name}.staging-', dir=out.parent))
  try:
    yield staging
    _move_into_place(staging, out, overwrite=overwrite)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def _move_into_place(staging: pathlib.Path, out: pathlib.Path, *, overwrite: bool) -> None:
  refuse_to_mix(out, overwrite=overwrite)  # again: something may have written there meanwhile
  if out.is_dir() and not any(out.iterdir()):
    out.rmdir()
  if not out.exists():
    os.rename(staging, out)
    return
  old = out.parent / f'.{out.name}.old-{uuid.uuid4().hex[:8]}'
  os.rename(out, old)
  os.rename(staging, out)
  shutil.rmtree(old, ignore_errors=True)

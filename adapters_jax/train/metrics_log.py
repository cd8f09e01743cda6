"""Where training metrics go: `metrics.jsonl` and TensorBoard event files.

Only process 0 writes. On resume, `metrics.jsonl` is cut back to the restored step (and a line torn
by a kill during a write is dropped), so a resumed run ends with the same records as an
uninterrupted one; measured timings (`TIMING_KEYS`) differ from run to run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import numpy as np

from adapters_jax.checkpoint import disk_full

METRICS_FILE = 'metrics.jsonl'
TIMING_KEYS = ('examples_per_second',)  # measurements, not results


def _tf_summary():
  import tensorflow as tf  # lazily: TensorFlow is heavy

  tf.config.set_visible_devices([], 'GPU')  # keep TF off the accelerators JAX uses
  return tf.summary


class MetricsLog:
  """Appends `{'step', 'split', **metrics}` records to metrics.jsonl and TensorBoard.

  Args:
    workdir: run directory.
    resume_step: records after this step are dropped from an existing metrics.jsonl (a resumed run
      recomputes them); None keeps nothing (a fresh run).
    tensorboard: also write TensorBoard event files under `workdir/tensorboard`.
  """

  def __init__(self, workdir: str, resume_step: int | None = None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._writer = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    kept = []
    if resume_step is not None and os.path.exists(self.path):
      records, torn = _parse_lines(self.path)
      if torn:
        print(f'{self.path}: dropped {len(torn)} torn line(s) (line {", ".join(map(str, torn))}), '
              'left by an interrupted write.', file=sys.stderr, flush=True)
      kept = [json.dumps(r, sort_keys=True) + '\n' for r in records if r['step'] <= resume_step]
    with open(self.path, 'w') as f:
      f.writelines(kept)
    if tensorboard:
      self._writer = _tf_summary().create_file_writer(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: _to_python(v) for k, v in metrics.items()}
    line = json.dumps({'step': int(step), 'split': split, **clean}, sort_keys=True) + '\n'
    size = os.path.getsize(self.path)
    with disk_full.reporting(self.path, len(line)):
      try:
        with open(self.path, 'a') as f:
          f.write(line)
      except OSError:
        os.truncate(self.path, size)  # no torn line: the records before stay whole
        raise
    if self._writer is not None:
      summary = _tf_summary()
      with disk_full.reporting(os.path.join(os.path.dirname(self.path), 'tensorboard'), len(line)):
        with self._writer.as_default(step=int(step)):
          for k, v in clean.items():
            if isinstance(v, (int, float)):
              summary.scalar(f'{split}/{k}', v)
        self._writer.flush()

  def close(self) -> None:
    """Closes the TensorBoard writer; a second call does nothing."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _to_python(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value).item()
  return value


def _parse_lines(path: str) -> tuple[list[dict[str, Any]], list[int]]:
  """The records of a metrics.jsonl, and the numbers of the lines that are not whole records."""
  records, torn = [], []
  with open(path, encoding='utf-8', errors='replace') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        torn.append(number)
        continue
      if isinstance(record, dict) and isinstance(record.get('step'), int):
        records.append(record)
      else:
        torn.append(number)
  return records, torn


def read_metrics(workdir: str, timings: bool = True) -> list[dict[str, Any]]:
  """The records of a run's metrics.jsonl (without `TIMING_KEYS` when `timings` is False)."""
  records, _ = _parse_lines(os.path.join(workdir, METRICS_FILE))
  if not timings:
    records = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
  return records

"""Where training metrics go: `metrics.jsonl`, TensorBoard event files, and a progress line.

Only process 0 writes. On resume, `metrics.jsonl` is cut back to the restored step, so a resumed run
ends with the same file as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np

METRICS_FILE = 'metrics.jsonl'


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
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)['step'] <= resume_step]
    with open(self.path, 'w') as f:
      f.writelines(kept)
    if tensorboard:
      self._writer = _tf_summary().create_file_writer(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: _to_python(v) for k, v in metrics.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), 'split': split, **clean}, sort_keys=True) + '\n')
    if self._writer is not None:
      summary = _tf_summary()
      with self._writer.as_default(step=int(step)):
        for k, v in clean.items():
          if isinstance(v, (int, float)):
            summary.scalar(f'{split}/{k}', v)
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _to_python(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value).item()
  return value


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of a run's metrics.jsonl."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """A one-line progress report with throughput and ETA, on stderr (process 0 only).

  Throughput is measured from the first reported step on, so compilation does not count.
  """

  def __init__(self, total_steps: int, start_step: int, batch_size: int):
    self.total = total_steps
    self.batch_size = batch_size
    self.enabled = jax.process_index() == 0
    self.tty = sys.stderr.isatty()
    self._mark: tuple[int, float] | None = None  # (step, time) of the first report
    self._start = (start_step, time.perf_counter())

  def examples_per_second(self, step: int) -> float:
    mark_step, mark_time = self._mark if self._mark and step > self._mark[0] else self._start
    return (step - mark_step) * self.batch_size / max(time.perf_counter() - mark_time, 1e-9)

  def update(self, step: int, loss: float) -> None:
    if self._mark is None:
      self._mark = (step, time.perf_counter())
    if not self.enabled:
      return
    rate = self.examples_per_second(step)
    eta = (self.total - step) * self.batch_size / max(rate, 1e-9)
    line = (f'step {step}/{self.total} ({100 * step / self.total:.0f}%) | loss {loss:.4f} | '
            f'{rate:.1f} ex/s | ETA {_duration(eta)}')
    end = '' if self.tty and step < self.total else '\n'
    print(('\r' if self.tty else '') + line, end=end, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s'

"""Killing a CLI training run mid-run, as a crash would, and checking that the run resumed after it
ends as an uninterrupted one."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np

from adapters_jax.checkpoint import save
from adapters_jax.train.metrics_log import read_metrics


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


def assert_resumed_equals_uninterrupted(straight, resumed, final_step: int) -> None:
  """The workdir `resumed` ends as `straight`: last training state (bit for bit, at `final_step`),
  best adapter leaves, metrics records, and the result's best step and metrics."""
  from tests.train.test_loop import _final_state_leaves

  step_a, state_a = _final_state_leaves(straight)
  step_b, state_b = _final_state_leaves(resumed)
  assert step_a == step_b == final_step
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(a, b)
  best_a, best_b = save.load_leaves(straight / 'best'), save.load_leaves(resumed / 'best')
  assert best_a.keys() == best_b.keys()
  for path in best_a:
    np.testing.assert_array_equal(best_a[path], best_b[path])
  assert read_metrics(str(straight), timings=False) == read_metrics(str(resumed), timings=False)
  result_a = json.loads((straight / 'result.json').read_text())
  result_b = json.loads((resumed / 'result.json').read_text())
  for key in ('best_step', 'validation_metrics', 'test_metrics'):
    assert result_a[key] == result_b[key]

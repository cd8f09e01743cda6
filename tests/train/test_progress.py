"""Progress: training throughput over a window without compile and evaluation time; ETA with evals."""

import pytest

from adapters_jax.train import progress as progress_module
from adapters_jax.train.progress import Progress


class _Clocks:
  """A wall clock and a compile-seconds counter the test moves by hand."""

  def __init__(self):
    self.wall, self.compiled = 0.0, 0.0

  def advance(self, seconds, compiling=0.0):
    self.wall += seconds
    self.compiled += compiling


def test_throughput_excludes_compile_and_paused_time_and_eta_prices_evaluations(monkeypatch):
  # Bugs caught: a cumulative rate that counts compilation and evaluation (the 20.6 -> 5.3 ex/s
  # drop after an evaluation), and an ETA that leaves out the evaluations still to come.
  clocks = _Clocks()
  monkeypatch.setattr(progress_module.time, 'perf_counter', lambda: clocks.wall)
  monkeypatch.setattr(progress_module, 'compile_seconds', lambda: clocks.compiled)
  monkeypatch.setattr(Progress, '_print', lambda self, line: None)
  progress = Progress(total_steps=10, start_step=0, batch_size=4, eval_every_steps=5,
                      eval_examples=8, final_eval_examples=16)
  clocks.advance(10.0, compiling=3.0)  # steps 1-2: 7 s of training plus 3 s compiling the step
  with progress.paused(), progress.evaluation('validation', 8) as done:
    clocks.advance(6.0, compiling=2.0)  # 8 examples in 4 s plus 2 s compiling the eval step
    done(8)
  progress.mark(2)
  assert progress.examples_per_second() == pytest.approx(2 * 4 / 7.0)
  # Left: 8 steps of 4 examples at 8/7 ex/s = 28 s; evaluations at steps 5 and 10 (8 examples
  # each) and the final one (16) = 32 examples at 2 ex/s = 16 s.
  assert progress.eta_seconds(2) == pytest.approx(28.0 + 16.0)
  # The window moves on: a faster stretch shows up at once, not diluted by the slow start.
  for step in range(3, 3 + progress_module.WINDOW):
    clocks.advance(1.0)
    progress.mark(step)
  assert progress.examples_per_second() == pytest.approx(4.0)
  assert progress.overall_examples_per_second() == pytest.approx(
      (2 + progress_module.WINDOW) * 4 / (7.0 + progress_module.WINDOW))

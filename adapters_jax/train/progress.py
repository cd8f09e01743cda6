"""Progress lines with honest throughput and ETA, on stderr (process 0 only).

Training throughput is measured over a window of recent log intervals and counts training time
only: the time spent compiling (JAX's compile-duration events) and the time spent in evaluation and
checkpointing (`Progress.paused()`) are taken out. The ETA adds the evaluations still to come,
priced at the measured evaluation speed. Evaluations print a line when they start, one about every
`EVAL_REPORT_SECONDS` while they run, and one when they end.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import time

import jax

EVAL_REPORT_SECONDS = 10.0
WINDOW = 10  # log intervals the training throughput is averaged over
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')

_compile_seconds = [0.0]
_listening = [False]


def _on_duration(event: str, duration: float, **_) -> None:
  if event in COMPILE_EVENTS:
    _compile_seconds[0] += duration


def compile_seconds() -> float:
  """Seconds this process has spent tracing, lowering and compiling since the first call."""
  if not _listening[0]:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _listening[0] = True
  return _compile_seconds[0]


class Progress:
  """Training and evaluation progress of one run.

  Args:
    total_steps: the run's last step.
    start_step: the step this process starts from (after a resume).
    batch_size: global examples per step.
    eval_every_steps: steps between evaluations (one also at the end).
    eval_examples: examples of one evaluation during training.
    final_eval_examples: examples of the evaluation after training (validation and test).
  """

  def __init__(self, total_steps: int, start_step: int, batch_size: int, eval_every_steps: int,
               eval_examples: int, final_eval_examples: int):
    self.total = total_steps
    self.batch_size = batch_size
    self.eval_every = eval_every_steps
    self.eval_examples = eval_examples
    self.final_eval_examples = final_eval_examples
    self.enabled = jax.process_index() == 0
    self.tty = sys.stderr.isatty()
    self._open_line = False  # a tty progress line waits for its newline
    self._windows: collections.deque[tuple[int, float]] = collections.deque(maxlen=WINDOW)
    self._train_steps, self._train_seconds = 0, 0.0
    self._eval_examples_done, self._eval_seconds = 0, 0.0
    self._mark = (start_step, time.perf_counter(), compile_seconds())
    self._paused_seconds = 0.0  # wall time excluded from training since the last mark
    self._paused_compile = 0.0  # compile time inside those paused sections

  @contextlib.contextmanager
  def paused(self):
    """Excludes the enclosed wall time (evaluation, checkpointing) from training throughput."""
    start, compile_start = time.perf_counter(), compile_seconds()
    try:
      yield
    finally:
      self._paused_seconds += time.perf_counter() - start
      self._paused_compile += compile_seconds() - compile_start

  def mark(self, step: int) -> None:
    """Closes the window of training steps since the last mark (call after blocking on them)."""
    mark_step, mark_time, mark_compile = self._mark
    now, compiled = time.perf_counter(), compile_seconds()
    # Compilation inside paused sections is already out with them.
    training_compile = max(compiled - mark_compile - self._paused_compile, 0.0)
    seconds = max(now - mark_time - self._paused_seconds - training_compile, 1e-9)
    if step > mark_step:
      self._windows.append((step - mark_step, seconds))
      self._train_steps += step - mark_step
      self._train_seconds += seconds
    self._mark = (step, now, compiled)
    self._paused_seconds = 0.0
    self._paused_compile = 0.0

  def examples_per_second(self) -> float:
    """Training examples per second over the recent window (0.0 before the first window)."""
    steps = sum(s for s, _ in self._windows)
    seconds = sum(t for _, t in self._windows)
    return steps * self.batch_size / seconds if seconds > 0 else 0.0

  def overall_examples_per_second(self) -> float:
    """Training examples per second over all steps this process ran (compile and eval excluded)."""
    if not self._train_seconds:
      return 0.0
    return self._train_steps * self.batch_size / self._train_seconds

  def eta_seconds(self, step: int) -> float:
    rate = self.examples_per_second()
    train = (self.total - step) * self.batch_size / rate if rate > 0 else 0.0
    evals = sum(1 for s in range(step + 1, self.total) if s % self.eval_every == 0)
    evals += 1 if step < self.total else 0  # the evaluation at the last step
    eval_examples = evals * self.eval_examples + self.final_eval_examples
    eval_rate = self._eval_examples_done / self._eval_seconds if self._eval_seconds else 0.0
    return train + (eval_examples / eval_rate if eval_rate > 0 else 0.0)

  def update(self, step: int, loss: float) -> None:
    """Prints the training progress line of `step`."""
    if not self.enabled:
      return
    line = (f'step {step}/{self.total} ({100 * step / self.total:.0f}%) | loss {loss:.4f} | '
            f'{self.examples_per_second():.1f} ex/s | ETA {_duration(self.eta_seconds(step))}')
    end = '' if self.tty and step < self.total else '\n'
    print(('\r' if self.tty else '') + line, end=end, file=sys.stderr, flush=True)
    self._open_line = end == ''

  @contextlib.contextmanager
  def evaluation(self, split: str, examples: int):
    """Reports an evaluation of `examples` on `split`; yields `done(n)` to call per batch."""
    start, compile_start = time.perf_counter(), compile_seconds()
    state = {'done': 0, 'last': start}
    self._print(f'eval {split}: {examples} examples')

    def done(n: int) -> None:
      state['done'] += n
      now = time.perf_counter()
      if now - state['last'] >= EVAL_REPORT_SECONDS and state['done'] < examples:
        state['last'] = now
        self._print(f'eval {split}: {state["done"]}/{examples} examples '
                    f'({state["done"] / (now - start):.1f} ex/s)')

    yield done
    compiled = compile_seconds() - compile_start
    seconds = time.perf_counter() - start
    self._eval_examples_done += examples
    self._eval_seconds += max(seconds - compiled, 1e-9)
    self._print(f'eval {split}: {examples} examples in {_duration(seconds)} '
                f'({examples / max(seconds - compiled, 1e-9):.1f} ex/s)')

  def _print(self, line: str) -> None:
    if self.enabled:
      print(('\n' if self._open_line else '') + line, file=sys.stderr, flush=True)
      self._open_line = False


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s'

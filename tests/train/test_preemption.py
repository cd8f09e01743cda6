"""SIGTERM (preemption) and a second process on a live workdir, through the CLI."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from adapters_jax.train.metrics_log import read_metrics
from tests.train.kill import assert_resumed_equals_uninterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BANNER = ' steps of '  # printed once the run has loaded, with its signal handlers and lock set


def _command(workdir, model_dir):
  return [sys.executable, '-m', 'experiments.train',
          '--config=experiments/configs/quickstart.py:smoke', f'--workdir={workdir}',
          f'--config.model={model_dir}', '--config.tensorboard=False',
          '--config.num_train_steps=8', '--config.checkpoint_every_steps=4',
          '--config.eval_every_steps=4', '--config.log_every_steps=4']


ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}


def _run(workdir, model_dir):
  return subprocess.run(_command(workdir, model_dir), cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=600)


def _start_until_loaded(workdir, model_dir) -> tuple[subprocess.Popen, list[str]]:
  """Starts a run and returns once it printed its banner (it holds the lock; no step ran)."""
  proc = subprocess.Popen(_command(workdir, model_dir), cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if BANNER in line:
      return proc, lines
  raise AssertionError(''.join(lines)[-3000:])


@pytest.mark.slow
def test_sigterm_saves_the_step_exits_0_and_the_rerun_equals_an_uninterrupted_run(
    tiny_bert_dir, tmp_path):
  # Bugs caught: no handler (exit 143, nothing saved past the last checkpoint); a save without the
  # losses since the last train record (the resumed run's step-4 record averages fewer steps).
  straight = tmp_path / 'straight'
  done = _run(straight, tiny_bert_dir)
  assert done.returncode == 0, done.stderr[-3000:]

  stopped = tmp_path / 'stopped'
  proc, _ = _start_until_loaded(stopped, tiny_bert_dir)
  proc.send_signal(signal.SIGTERM)  # arrives while step 1 compiles or runs
  _, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 0, stderr[-3000:]
  assert 'Traceback' not in stderr
  line, = [line for line in stderr.splitlines() if line.startswith('Stopped by SIGTERM')]
  step = int(line.split(' at step ')[1].split(';')[0])
  assert 1 <= step < 4 and 'rerun the same command to resume' in line
  assert sorted(os.listdir(stopped / 'checkpoints')) == [str(step)]
  assert not os.path.exists(stopped / 'result.json')

  resumed = _run(stopped, tiny_bert_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resuming from step {step}' in resumed.stderr
  assert_resumed_equals_uninterrupted(straight, stopped, 8)


@pytest.mark.slow
def test_a_second_run_on_a_live_workdir_is_refused_and_the_first_finishes(tiny_bert_dir, tmp_path):
  # Bug caught: no lock: both runs train, every metrics.jsonl record written twice.
  workdir = tmp_path / 'run'
  first, _ = _start_until_loaded(workdir, tiny_bert_dir)
  first.send_signal(signal.SIGSTOP)  # holds the lock for as long as the second one needs
  try:
    second = _run(workdir, tiny_bert_dir)
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 1
  assert second.stderr.strip().count('\n') == 0, second.stderr[-3000:]
  assert f'pid={first.pid} ' in second.stderr and 'is in use by host=' in second.stderr
  assert 'started=' in second.stderr
  _, stderr = first.communicate(timeout=600)
  assert first.returncode == 0, stderr[-3000:]
  records = read_metrics(str(workdir), timings=False)
  keys = [(r['step'], r['split']) for r in records]
  assert len(keys) == len(set(keys)) and (8, 'train') in keys


@pytest.mark.slow
def test_ctrl_c_is_a_stop_request_with_exit_130_and_a_second_one_interrupts():
  # Bugs caught: SIGINT left to KeyboardInterrupt (a traceback mid-step, nothing saved); a second
  # Ctrl-C swallowed too (a run that cannot be killed from the terminal).
  from adapters_jax.train.stop_signals import RunStoppedError, StopSignals

  # To this thread (the main one): `os.kill` may hand the signal to one of JAX's threads, and Python
  # then runs the handler at some later point of the main thread, maybe after the `raises` block.
  ctrl_c = lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT)
  # Python's own handler before, as in a fresh process (the test process's may have been changed
  # by a library an earlier test used); a second Ctrl-C must hand back to it.
  outside = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with StopSignals() as signals:
      ctrl_c()
      assert signals.requested == 'SIGINT'
      with pytest.raises(KeyboardInterrupt):
        ctrl_c()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, outside)
  stopped = RunStoppedError(signals.requested, 7, ['/w/checkpoints'])
  assert stopped.exit_code == 130
  assert str(stopped) == ('Stopped by SIGINT at step 7; checkpoint saved in /w/checkpoints; rerun '
                          'the same command to resume')

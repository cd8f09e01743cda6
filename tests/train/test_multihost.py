"""Two processes on this machine train one run data-parallel through `experiments.train`
(`--config.distributed=True`, the coordinator and process ids in the environment), stop together when
one of them is preempted, and end as one process trained on the same global batches."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from adapters_jax.train import loop
from experiments.configs import quickstart
from tests.train import vmap_runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_two(workdir, flags) -> list[subprocess.Popen]:
  port = _free_port()
  procs = []
  for process_id in (0, 1):
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
           'JAX_COORDINATOR_ADDRESS': f'localhost:{port}', 'JAX_NUM_PROCESSES': '2',
           'JAX_PROCESS_ID': str(process_id)}
    cmd = [sys.executable, '-m', 'experiments.train',
           '--config=experiments/configs/quickstart.py:smoke', f'--workdir={workdir}',
           '--config.distributed=True', *flags]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


@pytest.mark.slow
def test_two_processes_train_as_one_and_a_sigterm_to_one_stops_both_at_the_same_step(
    tiny_bert_dir, tmp_path):
  # Bugs caught: each process polls only its own signal (the signalled one saves and leaves, the
  # other waits in the next collective or saves another step); each process feeds the whole global
  # batch (or the same half) instead of its own rows; evaluation counts one process's rows; process 1
  # writes records or checkpoints too (the records would repeat).
  flags = [f'--config.model={tiny_bert_dir}', '--config.tensorboard=False',
           '--config.num_train_steps=40', '--config.log_every_steps=2',
           '--config.checkpoint_every_steps=20', '--config.eval_every_steps=20']
  two = tmp_path / 'two_processes'
  procs = _start_two(two, flags)
  deadline = time.time() + 600
  while not (two / 'metrics.jsonl').exists() or '"train"' not in (two / 'metrics.jsonl').read_text():
    assert time.time() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.02)
  procs[1].send_signal(signal.SIGSTOP)  # both wait in the next step's collective
  procs[1].send_signal(signal.SIGTERM)  # the scheduler preempts the second host only
  procs[1].send_signal(signal.SIGCONT)
  outputs = [p.communicate(timeout=600) for p in procs]
  lines = []
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
    line, = [line for line in err.splitlines() if line.startswith('Stopped by SIGTERM at step ')]
    lines.append(line)
  step = int(lines[0].split(' at step ')[1].split(';')[0])
  assert lines[0] == lines[1] and step < 40  # the same step on both
  assert str(step) in os.listdir(two / 'checkpoints')
  assert '16 on 2 device(s)' in outputs[0][1]  # one global batch over both processes

  for p in _start_two(two, flags):  # the rerun resumes on both
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  one = tmp_path / 'one_process'
  config = quickstart.get_config('smoke')
  config.model, config.tensorboard = tiny_bert_dir, False
  config.num_train_steps, config.log_every_steps = 40, 2
  config.checkpoint_every_steps = config.eval_every_steps = 20
  loop.train_and_evaluate(config, str(one))
  vmap_runs.assert_same_run(two, one)
  last, state = vmap_runs.latest_state(two, like_workdir=one)
  last_one, state_one = vmap_runs.latest_state(one)
  assert last == last_one == 40
  vmap_runs.assert_same_leaves(state, state_one)
  assert vmap_runs.result(two)['config']['distributed'] is True

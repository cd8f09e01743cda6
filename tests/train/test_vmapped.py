"""A vmapped group (`train.vmapped.train_group`, `experiments.sweep --launcher=vmap`) against the
same runs trained one by one with `train_and_evaluate`."""

import json
import os
import subprocess
import sys
import time

import pytest

from adapters_jax.train import engine, loop, vmapped
from tests.train import vmap_runs
from tests.train.kill import kill_once_checkpointed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Members: two learning rates on two seeds, and a learning rate that diverges.
MEMBERS = ({'learning_rate': 1e-3, 'seed': 0}, {'learning_rate': 3e-3, 'seed': 1},
           {'learning_rate': 1e30, 'seed': 0})
DIVERGES = 2


@pytest.fixture(scope='module')
def runs(tiny_bert_dir, tmp_path_factory):
  """The sweep config; workdirs of the members trained as one group, and of each trained alone;
  the errors of the runs trained alone."""
  root = tmp_path_factory.mktemp('vmapped')
  config_path = vmap_runs.write_sweep_config(root, tiny_bert_dir, list(MEMBERS))
  configs = [vmap_runs.member_config(config_path, **m) for m in MEMBERS]
  grouped = [root / f'group_{i}' for i in range(len(MEMBERS))]
  vmapped.train_group(configs, [str(w) for w in grouped])
  alone = [root / f'alone_{i}' for i in range(len(MEMBERS))]
  errors = {}
  for i, (config, workdir) in enumerate(zip(configs, alone, strict=True)):
    try:
      loop.train_and_evaluate(config, str(workdir))
    except engine.NonFiniteLossError as e:
      errors[i] = str(e)
  return config_path, grouped, alone, errors


@pytest.mark.slow
def test_each_member_ends_as_its_separate_run(runs):
  # Fails if the members share one data order or one learning rate, if the dropout stream is not
  # the member's own, or if a member's updates leak into another's state.
  _, grouped, alone, _ = runs
  for i in range(len(MEMBERS)):
    if i != DIVERGES:
      vmap_runs.assert_same_run(grouped[i], alone[i])
  # Same step, optimizer state and rng in the last training checkpoint, too.
  step, state = vmap_runs.latest_state(grouped[1])
  step_alone, state_alone = vmap_runs.latest_state(alone[1])
  assert step == step_alone == 6
  vmap_runs.assert_same_leaves(state, state_alone)
  # The members really differ (a grid row, not one run written twice).
  first, second = vmap_runs.best_leaves(grouped[0]), vmap_runs.best_leaves(grouped[1])
  assert any(abs(first[p] - second[p]).max() > 1e-4 for p in first)


@pytest.mark.slow
def test_a_diverging_member_stops_alone_at_its_last_finite_step(runs):
  # Fails if the non-finite update is applied (the stopped member's params go inf/NaN), if the
  # member goes on training, or if its stop ends the whole group.
  _, grouped, alone, errors = runs
  assert list(errors) == [DIVERGES]  # trained alone, it stops with an error
  result = vmap_runs.result(grouped[DIVERGES])
  stopped = result['stopped_at_step']
  assert f'at step {stopped + 1}' in errors[DIVERGES]
  assert 'non-finite training loss' in result['stop_reason']
  # Its state is the one after its last finite step: the separate run's last checkpoint.
  step_alone, state_alone = vmap_runs.latest_state(alone[DIVERGES])
  assert step_alone == stopped
  assert result['best_step'] == stopped  # evaluated once, where it stopped
  best = vmap_runs.best_leaves(grouped[DIVERGES])
  params_alone = {k: v for k, v in state_alone.items() if k.startswith("['params']")}
  assert len(params_alone) == len(best)
  for path, value in best.items():
    key = "['params']" + ''.join(f"['{part}']" for part in path.split('/'))
    # ~1e29 after one step at rate 1e30: float32 rounding of the gradients shows at 1e-4.
    vmap_runs.assert_same_leaves({path: value}, {path: params_alone[key]}, rtol=1e-3)
  # The other members trained all their steps.
  for i in range(DIVERGES):
    assert 'stopped_at_step' not in vmap_runs.result(grouped[i])
    assert vmap_runs.latest_state(grouped[i])[0] == 6


def _sweep(config_path, sweep_dir, wait=True):
  cmd = [sys.executable, '-m', 'experiments.sweep', f'--config={config_path}',
         f'--sweep_dir={sweep_dir}', '--launcher=vmap']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  if wait:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_sweep_cli_vmap_killed_and_rerun_ends_as_uninterrupted(runs, tmp_path):
  # Fails if the launcher does not group the row, if a resumed member restarts from scratch with
  # a stale metrics log or data position, or if members resume from different steps.
  config_path, grouped, _, _ = runs
  sweep_dir = tmp_path / 'sweep'
  proc = _sweep(config_path, sweep_dir, wait=False)
  plan_file = sweep_dir / 'runs.json'
  deadline = time.time() + 120
  while not plan_file.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  time.sleep(0.2)  # written in one json.dump
  plan = json.loads(plan_file.read_text())['runs']
  kill_once_checkpointed(proc, plan[0]['workdir'], 2)
  assert not any(os.path.exists(os.path.join(r['workdir'], 'result.json')) for r in plan)

  done = _sweep(config_path, sweep_dir)
  assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
  assert 'start 3 members as one program' in done.stdout
  assert '2 runs done, 1 stopped on a non-finite loss' in done.stdout
  for run in plan:
    i = MEMBERS.index(run['overrides'])
    if i == DIVERGES:
      got, want = vmap_runs.result(run['workdir']), vmap_runs.result(grouped[i])
      assert got['stopped_at_step'] == want['stopped_at_step']
    else:
      vmap_runs.assert_same_run(run['workdir'], grouped[i])

"""A sweep launcher owns its runs: they die with it, and a second launcher is refused."""

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')

LINGERING_TRAIN = '''#!{python}
"""Stands in for `python -m experiments.train`: records its pid, then trains for a long time."""
import os, sys, time
workdir = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--workdir='))
with open(os.path.join(workdir, 'pid.tmp'), 'w') as f:
  f.write(str(os.getpid()))
os.replace(os.path.join(workdir, 'pid.tmp'), os.path.join(workdir, 'pid'))
time.sleep(120)
'''


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie waiting for its reaper has ended)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rpartition(')')[2].split()[0] != 'Z'
  except FileNotFoundError:
    return False


def _sweep(sweep_dir, fake_python):
  return [sys.executable, '-m', 'experiments.sweep', f'--config={CONFIGS}/mini_rotten_tomatoes.py',
          f'--sweep_dir={sweep_dir}', '--launcher=local', '--only=method=lora', '--parallel=1',
          f'--python={fake_python}']


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the parent-death signal is Linux')
def test_a_killed_launcher_leaves_no_run_alive_and_a_second_launcher_is_refused(tmp_path):
  # Bugs caught: children started without the parent-death signal (orphans train on); no lock on
  # the sweep directory (a second launcher starts a second trainer on the same workdir).
  fake = tmp_path / 'fake_python'
  fake.write_text(LINGERING_TRAIN.format(python=sys.executable))
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  sweep_dir = tmp_path / 'sweep'
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
  launcher = subprocess.Popen(_sweep(sweep_dir, fake), cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and not list(sweep_dir.glob('*/pid')):
      assert launcher.poll() is None, 'the launcher ended before starting a run'
      time.sleep(0.1)
    pid_file, = sweep_dir.glob('*/pid')
    child = int(pid_file.read_text())
    assert _alive(child)

    second = subprocess.run(_sweep(sweep_dir, fake), cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 1 and f'pid={launcher.pid} ' in second.stderr, second.stderr
    assert second.stderr.strip().count('\n') == 0, second.stderr
    assert len(list(sweep_dir.glob('*/pid'))) == 1  # it started nothing
  finally:
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
  deadline = time.time() + 5
  while time.time() < deadline and _alive(child):
    time.sleep(0.05)
  assert not _alive(child)

"""A device that fills up during a run, through the CLI: one line, nothing lost, the rerun completes.

As root the run's workdir is on a small tmpfs that the test fills while the run is paused; otherwise
(`tests.train.full_disk_run`) writes fail with ENOSPC from the moment a flag file exists.
"""

import contextlib
import errno
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from adapters_jax.checkpoint import disk_full, save
from adapters_jax.checkpoint.training import TrainCheckpoints
from tests.train.kill import assert_resumed_equals_uninterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}


def _flags(workdir, model_dir):
  return ['--config=experiments/configs/quickstart.py:smoke', f'--workdir={workdir}',
          f'--config.model={model_dir}', '--config.tensorboard=False', '--config.num_train_steps=12',
          '--config.checkpoint_every_steps=4', '--config.eval_every_steps=4',
          '--config.log_every_steps=4']


@contextlib.contextmanager
def _small_device(directory):
  """A 64 MiB tmpfs at `directory` (yields True), or the plain directory when mounting is not
  allowed here (yields False)."""
  directory.mkdir()
  if os.geteuid() == 0 and subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs',
                                           str(directory)], capture_output=True).returncode == 0:
    try:
      yield True
    finally:
      subprocess.run(['umount', '-l', str(directory)], check=False)
  else:
    yield False


def _fill(directory) -> None:
  """Writes `directory/filler` until the device refuses, which may be at once (creating the file
  already fails on a device that the run or the machine's memory pressure has filled)."""
  try:
    with open(directory / 'filler', 'wb') as f:
      while True:
        f.write(b'\0' * (1 << 16))
        f.flush()
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise


def _partial_files(workdir) -> list[str]:
  return glob.glob(f'{workdir}/**/*.orbax-checkpoint-tmp*', recursive=True) + \
      glob.glob(f'{workdir}/**/.*.tmp*', recursive=True)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_loses_nothing(tiny_bert_dir, tmp_path):
  # Bugs caught: hundreds of TensorStore traceback lines with the cause buried; a partial
  # `*.orbax-checkpoint-tmp` left to keep the disk full; a damaged checkpoint or best/ after it.
  straight = tmp_path / 'straight'
  done = subprocess.run([sys.executable, '-m', 'experiments.train', *_flags(straight, tiny_bert_dir)],
                        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  device = tmp_path / 'device'
  with _small_device(device) as mounted:
    workdir = device / 'run'
    flag = device / 'full'
    command = [sys.executable, '-m', 'experiments.train'] if mounted else \
        [sys.executable, '-m', 'tests.train.full_disk_run', str(flag)]
    proc = subprocess.Popen([*command, *_flags(workdir, tiny_bert_dir)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (workdir / 'checkpoints' / '4' / 'files.sha256.json').exists():
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
      time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)
    if mounted:
      _fill(device)
    else:
      flag.touch()
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-3000:]
    assert 'Traceback' not in stderr, stderr[-3000:]
    line, = [line for line in stderr.splitlines() if line.startswith('Cannot train')]
    assert 'no space left on the device of ' + str(workdir) in line and 'are free' in line
    assert 'run the same command again' in line
    assert not _partial_files(workdir)
    checkpoints = TrainCheckpoints(str(workdir / 'checkpoints'))
    last = checkpoints.latest_step()
    checkpoints.check_files(last)  # the previous checkpoint is whole
    checkpoints.close()
    assert last >= 4
    save.check_files(str(workdir / 'best'))

    (device / 'filler').unlink(missing_ok=True)
    flag.unlink(missing_ok=True)
    resumed = subprocess.run([*command, *_flags(workdir, tiny_bert_dir)], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'Resuming from step {last}' in resumed.stderr
    assert_resumed_equals_uninterrupted(straight, workdir, 12)


def test_full_disk_errors_are_recognised_through_their_wrappers(tmp_path):
  # Orbax and TensorStore wrap ENOSPC in their own errors, sometimes only in the message.
  wrapped = ValueError('RESOURCE_EXHAUSTED: Failed to write 184 bytes to file 11: No space left on '
                       "device [os_error_code='28']")
  try:
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
      raise RuntimeError('save failed') from e
  except RuntimeError as e:
    chained = e
  assert disk_full.is_disk_full(wrapped) and disk_full.is_disk_full(chained)
  assert not disk_full.is_disk_full(ValueError('shape mismatch'))
  partial = tmp_path / 'partial.tmp'
  partial.write_text('x')
  said = r'about 1,024 bytes and [\d,]+ are free.*partial files removed'
  with pytest.raises(disk_full.DiskFullError, match=said), \
      disk_full.reporting(tmp_path / 'out', 1024, partial=lambda: [str(partial)]):
    raise chained
  assert not partial.exists()
  with pytest.raises(ValueError, match='shape mismatch'), disk_full.reporting(tmp_path, 1):
    raise ValueError('shape mismatch')  # other errors pass unchanged

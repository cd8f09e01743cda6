"""Runs a user can trust, through the CLI on small CSV files: failed starts, finished reruns,
damaged checkpoints, torn metrics lines, progress and quiet exits."""

import csv
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from adapters_jax.checkpoint import save
from adapters_jax.train.metrics_log import read_metrics
from tests.train.test_loop import ROOT, _final_state_leaves

CONFIG = '''
from adapters_jax.config.schema import run_config


def get_config():
  config = run_config()
  config.task = 'local'
  config.local_task.name = 'reviews'
  config.local_task.paths = {paths!r}
  config.local_task.text_columns = ('sentence',)
  config.local_task.label_names = ('neg', 'pos')
  config.max_length = 32
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_train_steps = 8
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  config.learning_rate = 1e-2
  return config
'''


def _write_task(folder):
  """A train and a validation CSV (sentence,label), and two config files: with and without dev."""
  words = ['good', 'fine', 'great', 'bad', 'dull', 'awful']
  for name, count in (('train', 64), ('dev', 24)):
    with open(folder / f'{name}.csv', 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['sentence', 'label'])
      for i in range(count):
        word = words[i % 6]
        writer.writerow([f'a {word} film number {i}', 'pos' if i % 6 < 3 else 'neg'])
  train_only = folder / 'train_only.py'
  train_only.write_text(CONFIG.format(paths={'train': str(folder / 'train.csv')}))
  with_dev = folder / 'with_dev.py'
  with_dev.write_text(CONFIG.format(paths={'train': str(folder / 'train.csv'),
                                          'validation': str(folder / 'dev.csv')}))
  return str(train_only), str(with_dev)


def _train(config_file, workdir, model_dir, *extra):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  return subprocess.run([sys.executable, '-m', 'experiments.train', f'--config={config_file}',
                         f'--workdir={workdir}', f'--config.model={model_dir}', *extra],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _file_bytes(folder) -> dict[str, str]:
  out = {}
  for path in sorted(glob.glob(os.path.join(folder, '**', '*'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def finished_run(tiny_bert_dir, tmp_path_factory):
  """A workdir after: a start without a validation file (refused), a start with a typo in the model
  name (fails), then the corrected command (finishes). Returns (folder, workdir, the CLI runs)."""
  folder = tmp_path_factory.mktemp('local_csv')
  train_only, with_dev = _write_task(folder)
  workdir = folder / 'run'
  no_dev = _train(train_only, workdir, tiny_bert_dir)
  typo = _train(with_dev, workdir, tiny_bert_dir + '-typo')
  done = _train(with_dev, workdir, tiny_bert_dir)
  return folder, workdir, with_dev, {'no_dev': no_dev, 'typo': typo, 'done': done}


@pytest.mark.slow
def test_a_task_without_validation_split_is_a_clear_error(finished_run):
  # Bug caught: `spec.validation_splits[0]` on an empty tuple (IndexError) instead of the fix.
  no_dev = finished_run[3]['no_dev']
  assert no_dev.returncode != 0
  assert 'IndexError' not in no_dev.stderr
  last = no_dev.stderr.strip().splitlines()[-1]
  assert 'has no validation split' in last and '--config.local_task.paths.validation=' in last


@pytest.mark.slow
def test_failed_starts_leave_the_workdir_reusable(finished_run, tiny_bert_dir):
  # Bug caught: config.json written before the run has taken a step, so the corrected command is
  # refused ("holds a run with another config").
  _, workdir, _, runs = finished_run
  assert runs['typo'].returncode != 0 and '-typo' in runs['typo'].stderr
  assert runs['done'].returncode == 0, runs['done'].stderr[-3000:]
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['model'] == tiny_bert_dir and 'validation' in saved['local_task']['paths']


@pytest.mark.slow
def test_a_finished_run_rerun_reports_and_changes_nothing(finished_run, tiny_bert_dir):
  # Bug caught: a rerun that retrains the last step or re-evaluates: result.json rewritten
  # (examples/s 0.0), a duplicate test line in metrics.jsonl, a second TensorBoard events file.
  _, workdir, with_dev, runs = finished_run
  before = _file_bytes(workdir)
  assert glob.glob(str(workdir / 'tensorboard' / 'events.out.tfevents.*'))
  again = _train(with_dev, workdir, tiny_bert_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _file_bytes(workdir) == before
  first, second = (json.loads(r.stdout[r.stdout.index('{'):]) for r in (runs['done'], again))
  assert second == first and first['train_examples_per_second'] > 0


@pytest.mark.slow
def test_clean_stderr_progress_and_throughput_records(finished_run):
  # Bugs caught: Orbax tracebacks at exit; silent evaluations; throughput missing from the records.
  _, workdir, _, runs = finished_run
  stderr = runs['done'].stderr
  assert 'Traceback' not in stderr and 'Event loop is closed' not in stderr
  assert 'eval validation: 24 examples' in stderr
  assert 'eval validation: 24 examples in ' in stderr
  train = [r for r in read_metrics(str(workdir)) if r['split'] == 'train']
  assert len(train) == 8 and all(r['examples_per_second'] > 0 for r in train)
  import tensorflow as tf

  tags = set()
  for path in glob.glob(str(workdir / 'tensorboard' / 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags |= {value.tag for value in event.summary.value}
  assert 'train/examples_per_second' in tags and 'validation/accuracy' in tags


@pytest.mark.slow
def test_damaged_checkpoint_and_torn_metrics_line_resume_to_the_same_run(finished_run, tiny_bert_dir,
                                                                        tmp_path):
  # Bugs caught: a damaged latest checkpoint ending the run with a TensorStore dump (no fallback);
  # a torn metrics.jsonl line raising JSONDecodeError on resume.
  _, straight, with_dev, _ = finished_run
  workdir = tmp_path / 'interrupted'
  shutil.copytree(straight, workdir)
  # As if killed after the last checkpoint, while writing a metrics line, with a damaged step 8.
  os.remove(workdir / 'result.json')
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 8, "split": "vali')
  data_file = sorted(glob.glob(str(workdir / 'checkpoints' / '8' / 'state' / '**' / 'd' / '*'),
                               recursive=True))[0]
  with open(data_file, 'r+b') as f:
    f.seek(8)
    f.write(b'\x00garbage\x00')
  resumed = _train(with_dev, workdir, tiny_bert_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Traceback' not in resumed.stderr
  damaged = [line for line in resumed.stderr.splitlines() if 'step 8' in line and 'damaged' in line]
  assert len(damaged) == 1 and 'resuming from step 6' in damaged[0]
  assert 'torn line' in resumed.stderr

  step_a, state_a = _final_state_leaves(straight)
  step_b, state_b = _final_state_leaves(workdir)
  assert step_a == step_b == 8
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(a, b)
  best_a, best_b = (save.load_leaves(w / 'best') for w in (straight, workdir))
  for path in best_a:
    np.testing.assert_array_equal(best_a[path], best_b[path])
  assert read_metrics(str(straight), timings=False) == read_metrics(str(workdir), timings=False)
  result_a, result_b = (json.loads((w / 'result.json').read_text()) for w in (straight, workdir))
  for key in ('best_step', 'validation_metrics', 'test_metrics'):
    assert result_a[key] == result_b[key]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['6', '8']

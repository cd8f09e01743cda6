"""A workdir written before a config field existed reruns when that field is at its schema default,
and is refused, naming the field, when it is not; through `experiments.train` in a subprocess.

An old workdir is made from a new one by deleting fields from its saved `config.json`, which is
what a `config.json` written before those fields were added looks like.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from adapters_jax.config.schema import run_config
from tests.tiny_bert import write_tiny_bert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, 'experiments', 'configs', 'quickstart.py')


def _train(workdir, model_dir):
  """quickstart's smoke run, cut to 4 steps with a checkpoint every 2."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  return subprocess.run(
      [sys.executable, '-m', 'experiments.train', f'--config={QUICKSTART}:smoke',
       f'--workdir={workdir}', f'--config.model={model_dir}', '--config.num_train_steps=4',
       '--config.checkpoint_every_steps=2', '--config.eval_every_steps=4',
       '--config.max_eval_examples=16'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _drop_saved_fields(workdir, *fields):
  """Deletes dotted fields from the workdir's config.json; returns their saved values."""
  path = os.path.join(workdir, 'config.json')
  with open(path) as f:
    saved = json.load(f)
  values = []
  for field in fields:
    *parents, leaf = field.split('.')
    node = saved
    for part in parents:
      node = node[part]
    values.append(node.pop(leaf))
  with open(path, 'w') as f:
    json.dump(saved, f)
  return values


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """(a finished workdir, the model dir, the result summary the first run printed)."""
  folder = tmp_path_factory.mktemp('old_workdirs')
  model_dir = str(write_tiny_bert(folder / 'tiny_bert'))
  workdir = folder / 'run'
  first = _train(workdir, model_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  return workdir, model_dir, _printed_result(first)


def _printed_result(run):
  return json.loads(run.stdout[run.stdout.index('{'):])


def _read(path):
  with open(path) as f:
    return f.read()


# Fields the quickstart smoke run leaves at their schema defaults (one nested), and one it sets.
AT_DEFAULT = ('sort_window', 'lm.num_beams')
NOT_DEFAULT = 'max_length'


@pytest.mark.slow
def test_the_chosen_fields_are_and_are_not_at_their_defaults(finished, tmp_path):
  defaults = run_config()
  saved = _drop_saved_fields(shutil.copytree(finished[0], tmp_path / 'probe'),
                             *AT_DEFAULT, NOT_DEFAULT)
  assert saved == [defaults.sort_window, defaults.lm.num_beams, 64]
  assert defaults.max_length != 64


@pytest.mark.slow
def test_a_finished_run_missing_default_fields_reports_its_result(finished, tmp_path):
  # Bug caught: `check_config` comparing the saved config.json field by field without the
  # schema's defaults ("fields ['lm', 'sort_window'] differ").
  source, model_dir, printed = finished
  workdir = shutil.copytree(source, tmp_path / 'old_finished')
  _drop_saved_fields(workdir, *AT_DEFAULT)
  result = _read(workdir / 'result.json')
  again = _train(workdir, model_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'holds a finished run' in again.stderr
  assert _printed_result(again) == printed and _read(workdir / 'result.json') == result


@pytest.mark.slow
def test_a_half_done_run_missing_default_fields_resumes(finished, tmp_path):
  source, model_dir, _ = finished
  workdir = shutil.copytree(source, tmp_path / 'old_half_done')
  os.remove(workdir / 'result.json')
  shutil.rmtree(workdir / 'checkpoints' / '4')  # stopped after the checkpoint at step 2
  _drop_saved_fields(workdir, *AT_DEFAULT)
  again = _train(workdir, model_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resuming from step 2' in again.stderr
  with open(workdir / 'result.json') as f:
    assert json.load(f)['config']['sort_window'] == run_config().sort_window


@pytest.mark.slow
def test_a_missing_field_at_another_value_is_refused_naming_it(finished, tmp_path):
  source, model_dir, _ = finished
  workdir = shutil.copytree(source, tmp_path / 'old_other_value')
  _drop_saved_fields(workdir, *AT_DEFAULT, NOT_DEFAULT)
  result = _read(workdir / 'result.json')
  again = _train(workdir, model_dir)
  assert again.returncode != 0
  assert "fields ['max_length'] differ" in again.stderr, again.stderr[-3000:]
  assert _read(workdir / 'result.json') == result

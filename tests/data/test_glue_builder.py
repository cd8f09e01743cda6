"""GLUE through tfds's real `glue` builder, offline: GLUE's own files -> builder -> our loader.

`scripts/glue_files.py` writes the archives and TSVs the builder downloads (a few rows each, in
GLUE's column layouts) and runs the builder with its download manager reading them from the
manual directory. The expected texts and labels below are written out from GLUE's layout by
hand (row i of file F of task T holds 'T F i FIELD'), not read back through our code.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from adapters_jax.data import GLUE_TASK_NAMES, get_task, load_glue, load_task
from tests.tiny_bert import write_tiny_bert

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location('glue_files', ROOT / 'scripts' / 'glue_files.py')
glue_files = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(glue_files)

ROWS = 6
# Our split -> the GLUE file it comes from.
FILE_OF_SPLIT = {'train': 'train', 'validation': 'dev', 'test': 'test',
                 'validation_matched': 'dev_matched', 'validation_mismatched': 'dev_mismatched',
                 'test_matched': 'test_matched', 'test_mismatched': 'test_mismatched'}
# The text columns of each task's files, in model order (segment A, segment B).
FIELDS = {'cola': ('sentence',), 'sst2': ('sentence',), 'mrpc': ('sentence1', 'sentence2'),
          'qqp': ('question1', 'question2'), 'stsb': ('sentence1', 'sentence2'),
          'mnli': ('premise', 'hypothesis'), 'qnli': ('question', 'sentence'),
          'rte': ('sentence1', 'sentence2'), 'wnli': ('sentence1', 'sentence2')}
MRPC_DEV_ROWS = (1, 4)  # rows of msr_paraphrase_train.txt listed in the dev-ids file


def expected_rows(task: str, split: str) -> dict[int, tuple]:
  """idx -> (text_a, text_b, label) as GLUE's files for `task` hold them."""
  num_labels = get_task(task).num_labels
  rows = range(ROWS)
  if task == 'mrpc' and split != 'test':
    rows = [i for i in rows if (i in MRPC_DEV_ROWS) == (split == 'validation')]
  out = {}
  for i in rows:
    name = FILE_OF_SPLIT[split]
    texts = [f'{task} {name} {i} {field}' for field in FIELDS[task]]
    if split.startswith('test'):
      label = -1.0 if task == 'stsb' else -1
    else:
      label = 0.25 + 0.75 * i if task == 'stsb' else i % num_labels
    out[i] = (texts[0], texts[1] if len(texts) == 2 else None, label)
  return out


@pytest.fixture(scope='module')
def glue_data_dir(tmp_path_factory):
  """Every GLUE config our loader reads, prepared by tfds's builder from GLUE-layout files."""
  files_dir = glue_files.write_glue_files(tmp_path_factory.mktemp('glue_files'))
  data_dir = tmp_path_factory.mktemp('tfds')
  for config in glue_files.CONFIGS:
    glue_files.prepare_glue(config, files_dir, data_dir)
  return str(data_dir)


@pytest.mark.parametrize('task', GLUE_TASK_NAMES)
def test_builder_prepared_glue_reads_every_split_field_and_label(task, glue_data_dir):
  spec = get_task(task)
  loaded = load_task(f'glue/{task}', data_dir=glue_data_dir)
  assert set(loaded.splits) == set(spec.splits)
  for split, examples in loaded.splits.items():
    got = {e.idx: (e.text_a, e.text_b, e.label) for e in examples}
    assert got == expected_rows(task, split), (task, split)
    label_type = float if spec.is_regression else int
    assert all(type(e.label) is label_type for e in examples)


def test_load_glue_reads_one_split(glue_data_dir):
  examples = load_glue('mnli', 'validation_mismatched', data_dir=glue_data_dir)
  assert sorted(e.text_b for e in examples) == sorted(
      f'mnli dev_mismatched {i} hypothesis' for i in range(ROWS))
  assert sorted(e.label for e in examples) == [0, 0, 1, 1, 2, 2]


@pytest.mark.slow
def test_train_and_report_on_builder_prepared_glue(glue_data_dir, tmp_path):
  """GLUE files -> tfds builder -> `experiments.train` (tiny BERT) -> `experiments.report`."""
  model_dir = write_tiny_bert(tmp_path / 'tiny_bert')
  sweep_dir = tmp_path / 'sweep'
  config = ROOT / 'experiments' / 'configs' / 'houlsby_glue.py'
  train = subprocess.run(
      [sys.executable, '-m', 'experiments.train', f'--config={config}:smoke',
       f'--workdir={sweep_dir / "rte_houlsby"}', '--config.task=rte', f'--config.model={model_dir}',
       f'--config.data_dir={glue_data_dir}', '--config.num_train_steps=2',
       '--config.batch_size=4', '--config.max_length=16'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env())
  assert train.returncode == 0, train.stderr[-3000:]
  result = json.loads((sweep_dir / 'rte_houlsby' / 'result.json').read_text())
  assert result['task'] == 'rte' and result['method'] == 'houlsby'
  # Evaluated on the 6 dev rows (smoke keeps up to 32): the accuracy is a multiple of 1/6.
  correct = result['validation_metrics']['validation']['accuracy'] * ROWS
  assert correct == pytest.approx(round(correct), abs=1e-6)
  report = subprocess.run(
      [sys.executable, '-m', 'experiments.report', f'--sweep_dir={sweep_dir}',
       f'--config={config}'], cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
  assert report.returncode == 0, report.stderr[-3000:]
  table = (sweep_dir / 'report.md').read_text()
  assert 'Houlsby et al. 2019, Table 1' in table
  # The size-64 run fills both adapter rows' RTE cells, beside the paper's 71.5 and 68.8.
  rte_rows = [line for line in table.splitlines() if line.startswith('| RTE |')]
  assert len(rte_rows) == 2, table
  assert any('71.5' in line for line in rte_rows) and any('68.8' in line for line in rte_rows)


def _env():
  env = dict(os.environ)
  env.setdefault('JAX_PLATFORMS', 'cpu')
  return env


@pytest.fixture(scope='module')
def extra_glue_dir(tmp_path_factory):
  """tfds's `mnli_matched`, `mnli_mismatched` and `ax` configs, prepared by its builder."""
  files_dir = glue_files.write_glue_files(tmp_path_factory.mktemp('glue_extra_files'),
                                          glue_files.EXTRA_CONFIGS)
  data_dir = tmp_path_factory.mktemp('tfds_extra')
  for config in glue_files.EXTRA_CONFIGS:
    glue_files.prepare_glue(config, files_dir, data_dir)
  return str(data_dir)


def _tfds_rows(config: str, split: str, data_dir: str) -> dict[int, tuple]:
  import tensorflow_datasets as tfds

  dataset = tfds.load(f'glue/{config}', split=split, data_dir=data_dir, shuffle_files=False)
  return {int(r['idx']): (r['premise'].decode(), r['hypothesis'].decode(), int(r['label']))
          for r in tfds.as_numpy(dataset)}


@pytest.mark.parametrize('config, half', [('mnli_matched', 'matched'), ('mnli_mismatched', 'mismatched')])
def test_mnli_halves_hold_mnlis_dev_and_test_files_as_our_mnli_splits_do(config, half, extra_glue_dir,
                                                                         glue_data_dir):
  import tensorflow_datasets as tfds

  assert set(tfds.builder(f'glue/{config}', data_dir=extra_glue_dir).info.splits) == {'validation', 'test'}
  for split, ours in (('validation', f'validation_{half}'), ('test', f'test_{half}')):
    got = _tfds_rows(config, split, extra_glue_dir)
    assert got == expected_rows('mnli', ours), (config, split)
    # Our loader's split of the same name in `glue/mnli` holds the same rows.
    loaded = {e.idx: (e.text_a, e.text_b, e.label) for e in load_glue('mnli', ours, data_dir=glue_data_dir)}
    assert loaded == got, (config, split)


def test_ax_is_one_unlabelled_test_split_of_premise_hypothesis_pairs(extra_glue_dir):
  import tensorflow_datasets as tfds

  assert list(tfds.builder('glue/ax', data_dir=extra_glue_dir).info.splits) == ['test']
  assert _tfds_rows('ax', 'test', extra_glue_dir) == {
      i: (f'ax test {i} premise', f'ax test {i} hypothesis', -1) for i in range(ROWS)}

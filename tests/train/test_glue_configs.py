"""The GLUE configs run end to end on `tfds.testing.mock_data` with a tiny model.

For a few tasks (a pair task, STS-B regression, MNLI with its two validation splits), each paper
config's first grid point for that task is loaded as the sweep would run it, with the tiny BERT
checkpoint and a few steps, trained in-process, and its result.json checked; the report then
turns those results into the paper's columns.
"""

import json

import pytest
import tensorflow_datasets as tfds

from adapters_jax import sweeps
from adapters_jax.config import loading
from adapters_jax.config.schema import OPEN_FIELDS
from adapters_jax.sweeps import report
from adapters_jax.train import loop
from experiments.configs import houlsby_glue, lora_glue

# (config, task, method of the grid point: None = the task's first point, column to check)
CASES = [
    (houlsby_glue, 'rte', None, 'RTE'),            # full fine-tuning, pair task
    (houlsby_glue, 'stsb', 'houlsby', 'STS-B'),    # regression
    (houlsby_glue, 'mnli', 'houlsby', 'MNLI-mm'),  # 3 classes, two validation splits
    (lora_glue, 'mrpc', None, 'MRPC'),             # LoRA, pair task
]


def first_point_config(module, task, method, model_dir):
  """The config the sweep runs for the task's first grid point, shrunk to a few steps."""
  point = next(p for p in module.sweep()
               if p['task'] == task and method in (None, p['method']))
  config = module.get_config('smoke')
  loading.apply_overrides(config, [(k, sweeps.flag_text(v)) for k, v in point.items()],
                              OPEN_FIELDS)
  # Tiny: the grid's step counts and epochs would be hours; keep the point's method and rates.
  config.model = model_dir
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.batch_size = 4
  config.eval_batch_size = 8
  config.max_length = 32
  return point, config


@pytest.mark.slow
@pytest.mark.parametrize('module,task,method,column', CASES,
                         ids=[f'{m.__name__.split(".")[-1]}-{t}' for m, t, _, _ in CASES])
def test_paper_config_runs_on_mock_glue(module, task, method, column, tiny_bert_dir, tmp_path):
  point, config = first_point_config(module, task, method, tiny_bert_dir)
  with tfds.testing.mock_data(num_examples=12):
    loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'result.json') as f:
    result = json.load(f)
  assert result['task'] == task and result['method'] == point['method']
  assert result['config']['learning_rate'] == pytest.approx(point['learning_rate'])
  assert result['test_metrics'] == {}  # GLUE test labels are hidden
  spec_columns = [c for c in module.COLUMNS if c.task == task]
  for c in spec_columns:
    split = c.validation_split or 'validation'
    assert c.metric in result['validation_metrics'][split]
  if point['method'] != 'full':
    assert 0 < result['trainable_percent'] < 100
  result['workdir'] = str(tmp_path)
  rows = report.summarize([result], module.method_label, module.COLUMNS, module.PAPER)
  cells = {r.column: r for r in rows}
  assert column in cells and cells[column].split.startswith('validation')
  assert cells[column].paper == module.PAPER[column, cells[column].label]

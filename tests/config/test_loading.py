"""Config fields from the command line: `--config.a.b=value` for every field, typed by the field,
with free keys in open fields (method options, model fields, a local task's files); every mistake
is one line naming the fix. Through `experiments.train` in a subprocess, as a user runs it."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from adapters_jax.config import loading
from adapters_jax.config.schema import OPEN_FIELDS, run_config
from tests.tiny_bert import write_tiny_bert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GLUE = os.path.join(ROOT, 'experiments', 'configs', 'glue.py')
QUICKSTART = os.path.join(ROOT, 'experiments', 'configs', 'quickstart.py')


def _run(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _locked_config():
  config = run_config()
  config.lock()
  return config


def test_fields_are_typed_by_the_field_and_open_fields_take_literals():
  config = _locked_config()
  for key, text in [('learning_rate', '3e-4'), ('batch_size', '8'), ('tensorboard', 'false'),
                    ('local_task.text_columns', '("premise", "hypothesis")'),
                    ('method_options.size', '8'), ('method_options.train_also', '()'),
                    ('method_options.activation', 'relu'),
                    ('model_overrides.hidden_dropout', '0.0'),
                    ('local_task.paths.train', 'data/train.csv'), ('model', '12')]:
    loading.set_field(config, key, text, OPEN_FIELDS)
  assert config.learning_rate == 0.0003 and config.batch_size == 8 and config.tensorboard is False
  assert config.local_task.text_columns == ('premise', 'hypothesis')
  assert config.method_options.to_dict() == {'size': 8, 'train_also': (), 'activation': 'relu'}
  assert config.model_overrides.hidden_dropout == 0.0
  assert config.local_task.paths.train == 'data/train.csv'
  assert config.model == '12'  # a string field keeps the text
  # A whole dict, then one more entry; an open entry may change type.
  loading.set_field(config, 'local_task.paths', "{'train': 'a.csv'}", OPEN_FIELDS)
  loading.set_field(config, 'local_task.paths.validation', 'b.csv', OPEN_FIELDS)
  assert config.local_task.paths.to_dict() == {'train': 'a.csv', 'validation': 'b.csv'}
  loading.set_field(config, 'method_options.size', 'None', OPEN_FIELDS)
  assert config.method_options.size is None
  # Typed grid values: an int for a float field becomes a float.
  loading.apply_overrides(config, {'learning_rate': 1, 'seed': 3}, OPEN_FIELDS)
  assert isinstance(config.learning_rate, float) and config.seed == 3
  with pytest.raises(AttributeError):  # still locked: fixed fields get no new keys
    config.new_field = 1


@pytest.mark.parametrize('key, value, message', [
    ('learning_rat', '1', "Unknown config field 'learning_rat'. Did you mean 'learning_rate'?"),
    ('local_task.encodng', 'latin-1', "Did you mean 'local_task.encoding'"),
    ('local_task.pahts.train', 'x.csv', "Did you mean 'local_task.paths'"),
    ('nonexistent', '1', 'Fields of the config: adapter_drop_layers, '),
    ('learning_rate', 'fast', "Config field 'learning_rate' wants a float; got 'fast'"),
    ('batch_size', '8.5', "'batch_size' wants an int"),
    ('tensorboard', 'maybe', "'tensorboard' wants a bool"),
    ('adapter_drop_layers', '3', "'adapter_drop_layers' wants a tuple"),
    ('learning_rate.x', '1', "'learning_rate' holds a float"),
])
def test_mistakes_name_the_field_and_the_fix(key, value, message):
  with pytest.raises(loading.ConfigArgError, match=message.replace('(', r'\(').replace(
      '?', r'\?')):
    loading.set_field(_locked_config(), key, value, OPEN_FIELDS)


@pytest.mark.slow
@pytest.mark.parametrize('args, message', [
    (['--config.nonexistent=1'], "--config.nonexistent=1: Unknown config field 'nonexistent'."),
    (['--config.method_options.sizee=8'], "Unknown option(s) ['sizee'] for BottleneckConfig; "
                                          "valid options: ['sites'"),
    (['--config.learning_rate=fast'], "Config field 'learning_rate' wants a float"),
    (['--config.local_task.encodng=latin-1'], "Did you mean 'local_task.encoding'?"),
])
def test_cli_mistakes_are_one_line_before_anything_starts(args, message):
  run = _run('experiments.train', f'--config={QUICKSTART}', '--workdir=/nonexistent/never', *args,
             timeout=600)
  assert run.returncode == 1
  assert 'Traceback' not in run.stderr
  errors = [line for line in run.stderr.splitlines() if line.startswith('FATAL')]
  assert len(errors) == 1 and message in errors[0], run.stderr


@pytest.mark.slow
def test_train_cli_takes_every_field_in_dotted_form(tmp_path):
  """The forms the configs' docstrings show, on local latin-1 files and a tiny model."""
  model = write_tiny_bert(tmp_path / 'tiny_bert')
  rows = ['text,label'] + [f'{w} caf\u00e9,{"pos" if i % 2 else "neg"}'
                           for i, w in enumerate(['good', 'bad', 'fine', 'awful'] * 2)]
  for name in ('train.csv', 'dev.csv'):
    (tmp_path / name).write_bytes(('\n'.join(rows) + '\n').encode('latin-1'))
  workdir = tmp_path / 'run'
  run = _run('experiments.train', f'--config={GLUE}:local', f'--workdir={workdir}',
             f'--config.model={model}',
             f'--config.local_task.paths.train={tmp_path / "train.csv"}',
             f'--config.local_task.paths.validation={tmp_path / "dev.csv"}',
             '--config.local_task.encoding=latin-1',
             '--config.local_task.label_names=("neg", "pos")',
             '--config.method_options.size=8', "--config.method_options.train_also=()",
             '--config.model_overrides.hidden_dropout=0.0',
             '--config.num_train_steps=2', '--config.batch_size=4', '--config.eval_every_steps=2',
             '--config.checkpoint_every_steps=2', '--config.max_length=16',
             '--noconfig.tensorboard')
  assert run.returncode == 0, run.stderr[-3000:]
  with open(workdir / 'result.json') as f:
    result = json.load(f)
  config = result['config']
  assert config['method_options'] == {'size': 8, 'train_also': []}
  assert config['model_overrides'] == {'hidden_dropout': 0.0}
  assert config['local_task']['paths'] == {'train': str(tmp_path / 'train.csv'),
                                           'validation': str(tmp_path / 'dev.csv')}
  assert config['local_task']['encoding'] == 'latin-1' and config['tensorboard'] is False
  # Houlsby size 8 on hidden 32, 2 layers x 2 sites: (32*8 + 8) + (8*32 + 32) each; no layer norm
  # (train_also=()), plus the head's classifier dense 32*2 + 2.
  assert result['trainable_params'] == 4 * (32 * 8 + 8 + 8 * 32 + 32) + (32 * 2 + 2)


def test_config_values_survive_the_flag_round_trip():
  config = ml_collections.ConfigDict({'rate': 0.1, 'names': ('a', 'b'), 'opts': {}})
  config.lock()
  for key, value in [('rate', 3e-05), ('names', ('x,y', "it's")), ('opts.d', {'k': [1, 2]})]:
    loading.set_field(config, key, loading.format_value(value), ('opts',))
  assert config.rate == 3e-05 and config.names == ('x,y', "it's")
  assert config.opts.d.to_dict() == {'k': [1, 2]}


def test_a_field_named_at_the_wrong_level_points_to_its_place():
  with pytest.raises(loading.ConfigArgError, match="Did you mean 'local_task.encoding'"):
    loading.set_field(_locked_config(), 'encoding', 'latin-1', OPEN_FIELDS)

"""Every experiment config file loads, with each argument it documents, and every field is known."""

import glob
import importlib
import os
import shlex

import pytest

from adapters_jax.config import loading
from adapters_jax.config.schema import OPEN_FIELDS, run_config
from experiments.config_flag import check_method_options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, 'experiments', 'configs', '*.py'))
                      if not os.path.basename(p).startswith('_'))


def _module(path):
  name = os.path.splitext(os.path.basename(path))[0]
  return importlib.import_module(f'experiments.configs.{name}')


def test_there_are_config_files():
  assert any(p.endswith('quickstart.py') for p in CONFIG_FILES)


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_loads_and_has_only_known_fields(path):
  module = _module(path)
  args = getattr(module, 'CONFIG_ARGS', ('',))
  known = set(run_config().keys())
  for arg in args:
    config = module.get_config(arg)
    assert set(config.keys()) <= known, set(config.keys()) - known
    assert module.__doc__ and 'python -m experiments.' in module.__doc__


def test_locked_config_names_valid_fields_on_typo():
  config = run_config()
  config.lock()
  with pytest.raises(AttributeError, match='Did you mean "learning_rate"'):
    config.learning_rat = 1.0


def _docstring_commands(path):
  """The `python -m experiments.train|sweep ...` commands of a config's docstring, as argv lists."""
  text = _module(path).__doc__.replace('\\\n', ' ')
  return [shlex.split(line.split('#')[0])[1:] for line in text.splitlines()
          if 'python -m experiments.' in line and '$' not in line]


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_docstring_commands_set_only_fields_the_config_has(path):
  """Each `--config.KEY=VALUE` a config's docstring shows parses on that config, as the CLI would."""
  commands = _docstring_commands(path)
  assert commands
  for argv in commands:
    config_path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    if config_path is None:
      continue  # e.g. experiments.report
    file_path, _, arg = config_path.partition(':')
    assert os.path.basename(file_path) == os.path.basename(path), argv
    config = loading.get_config(_module(path), arg)
    config.lock()
    overrides = [a[len('--config.'):].split('=', 1) for a in argv if a.startswith('--config.')]
    loading.apply_overrides(config, overrides, OPEN_FIELDS)
    check_method_options(config)

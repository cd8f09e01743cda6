"""Every experiment config file loads, with each argument it documents, and every field is known."""

import glob
import importlib
import os

import pytest

from experiments.configs.common import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, 'experiments', 'configs', '*.py'))
                      if not os.path.basename(p).startswith('_') and
                      os.path.basename(p) != 'common.py')


def _module(path):
  name = os.path.splitext(os.path.basename(path))[0]
  return importlib.import_module(f'experiments.configs.{name}')


def test_there_are_config_files():
  assert any(p.endswith('quickstart.py') for p in CONFIG_FILES)


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_loads_and_has_only_known_fields(path):
  module = _module(path)
  args = getattr(module, 'CONFIG_ARGS', ('',))
  known = set(base_config().keys())
  for arg in args:
    config = module.get_config(arg)
    assert set(config.keys()) <= known, set(config.keys()) - known
    assert module.__doc__ and 'python -m experiments.' in module.__doc__


def test_locked_config_names_valid_fields_on_typo():
  config = base_config()
  config.lock()
  with pytest.raises(AttributeError, match='Did you mean "learning_rate"'):
    config.learning_rat = 1.0

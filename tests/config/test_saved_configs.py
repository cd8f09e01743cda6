"""A saved config against the config of a run now: missing fields count as their schema default."""

from adapters_jax.config.saved_configs import differing_fields, flatten, with_defaults
from adapters_jax.config.schema import run_config
from adapters_jax.train.run_files import as_json


def _current(**changes):
  config = run_config()
  config.update(changes)
  return as_json(config)


def _without(saved, *fields):
  saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in saved.items()}
  for field in fields:
    *parent, leaf = field.split('.')
    (saved[parent[0]] if parent else saved).pop(leaf)
  return saved


def test_fields_missing_at_their_default_do_not_differ():
  current = _current(max_length=64)
  assert differing_fields(_without(current, 'sort_window', 'lm.pack'), current) == []
  assert differing_fields(_without(current, 'lm'), current) == []  # a whole group added since


def test_a_missing_field_at_another_value_differs_by_its_dotted_name():
  current = _current(max_length=64, lm={'num_beams': 4})
  assert differing_fields(_without(current, 'max_length', 'lm.num_beams'), current) == [
      'lm.num_beams', 'max_length']


def test_present_fields_compare_by_value_and_removed_fields_differ():
  current = _current()
  saved = dict(current, seed=1, field_the_schema_dropped=3)
  assert differing_fields(saved, current) == ['field_the_schema_dropped', 'seed']


def test_open_fields_compare_whole():
  current = _current(method_options={'size': 8})
  assert differing_fields(_without(current, 'method_options'), current) == ['method_options']
  assert flatten(current)['method_options'] == {'size': 8}
  assert differing_fields(dict(current, method_options={'size': 8}), current) == []


def test_with_defaults_fills_only_what_is_missing():
  current = _current(max_length=64, method_options={'size': 8})
  saved = _without(current, 'sort_window', 'lm.num_beams')
  filled = with_defaults(dict(saved, field_the_schema_dropped=3))
  assert filled['sort_window'] == 50 and filled['lm']['num_beams'] == 1   # the schema's defaults
  assert filled['max_length'] == 64 and filled['method_options'] == {'size': 8}
  assert filled['field_the_schema_dropped'] == 3
  assert differing_fields(saved, filled) == ['field_the_schema_dropped']

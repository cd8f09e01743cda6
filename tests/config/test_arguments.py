"""The one parser of config-file arguments (`file.py:ARG`): rows, `smoke`, `key=value` items."""

import pytest

from adapters_jax.config import loading
from adapters_jax.config.arguments import ConfigArg, parse_config_arg, parse_items, split_parts
from adapters_jax.config.schema import SMOKE, run_config
from experiments.configs import fusion_glue, glue, quickstart

ROWS = ('adapter-rte', 'fusion-rte')


def test_smoke_alone():
  assert parse_config_arg('smoke') == ConfigArg(row='', smoke=True, items=())


def test_key_value_items_are_typed_literals_in_order():
  parsed = parse_config_arg("learning_rate=3e-4,method_options.size=8,task=mrpc,seed=1")
  assert parsed == ConfigArg(items=(('learning_rate', 0.0003), ('method_options.size', 8),
                                    ('task', 'mrpc'), ('seed', 1)))


def test_a_row_with_smoke_and_items_in_any_order():
  parsed = parse_config_arg('smoke,learning_rate=1e-2,fusion-rte', ROWS, default_row='adapter-rte')
  assert parsed == ConfigArg('fusion-rte', True, (('learning_rate', 0.01),))
  assert parse_config_arg('', ROWS, default_row='adapter-rte').row == 'adapter-rte'


def test_commas_inside_brackets_and_quotes_do_not_split():
  assert split_parts("a=('x', 'y'),b='c,d',smoke") == ["a=('x', 'y')", "b='c,d'", 'smoke']
  parsed = parse_config_arg("method_options.train_also=('a', 'b'),smoke")
  assert parsed.items == (('method_options.train_also', ('a', 'b')),) and parsed.smoke


@pytest.mark.parametrize('arg, why', [
    ('smoek', "'smoek' is not understood"),
    ('adapter-rte,fusion-rte', "two rows ('adapter-rte', 'fusion-rte')"),
    ('=3', "'=3' is not understood"),
])
def test_a_bad_argument_lists_what_is_valid(arg, why):
  with pytest.raises(ValueError) as error:
    parse_config_arg(arg, ROWS)
  message = str(error.value)
  assert why in message
  assert "one row of 'adapter-rte', 'fusion-rte'" in message and "'smoke'" in message
  assert 'key=value' in message


def test_apply_shrinks_then_sets_items_over_the_shrink():
  config = run_config()
  parse_config_arg('smoke,batch_size=4,method_options.size=8').apply(config, num_train_steps=6)
  assert config.batch_size == 4                      # the item wins over SMOKE's 8
  assert config.num_train_steps == 6                 # the config file's change to the shrink
  assert config.max_length == SMOKE['max_length']
  assert config.method_options.to_dict() == {'size': 8}


def test_an_item_naming_no_field_names_the_closest():
  with pytest.raises(loading.ConfigArgError, match="Did you mean 'learning_rate'"):
    parse_config_arg('learning_rat=1').apply(run_config())


def test_config_files_read_their_arguments_with_it():
  """The forms the config files document: a row, a row with smoke, smoke with an item."""
  assert glue.get_config('mrpc').task == 'mrpc' and glue.get_config('').task == 'rte'
  smoke_rte = glue.get_config('rte,smoke')
  assert smoke_rte.task == 'rte' and smoke_rte.num_train_steps == SMOKE['num_train_steps']
  assert glue.get_config('smoke,task=e2e_nlg').task == 'e2e_nlg'
  fusion = fusion_glue.get_config('fusion-rte,smoke')
  assert fusion.method == 'fusion' and fusion.task == 'rte' and fusion.num_train_steps == 4
  assert quickstart.get_config('smoke,seed=3').seed == 3
  with pytest.raises(ValueError, match="one row of 'adapter-mnli'"):
    fusion_glue.get_config('fusion-nope')


def test_parse_items_takes_only_key_value():
  assert parse_items('task=rte,method_options.size=8') == {'task': 'rte', 'method_options.size': 8}
  with pytest.raises(ValueError, match='not key=value'):
    parse_items('smoke')

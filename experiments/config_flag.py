r"""The `--config` flag of every experiment script: a config file plus `--config.a.b=value` overrides.

  python -m experiments.train --config=experiments/configs/glue.py:local --workdir=w \
      --config.local_task.paths.train=train.csv --config.method_options.size=8 \
      --config.method_options.train_also='()' --config.model_overrides.hidden_dropout=0.0

`--config=path[:arg]` loads `get_config(arg)` and locks it; each `--config.KEY=VALUE` then sets one
field, in command-line order (parsing as `adapters_jax.config.loading.set_field` describes: typed by
the field, free keys inside `schema.OPEN_FIELDS`). Every mistake is one line before anything starts:
an unknown field names the closest valid ones, a wrong type names the field and the type, an
unknown method option lists the method's options. Boolean fields also take `--config.x` /
`--noconfig.x`.

After parsing, `FLAGS.config` is the ConfigDict; `FLAGS['config'].config_path` is the `path[:arg]`
given and `FLAGS['config'].overrides` the (key, text) pairs, in order.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import ml_collections
from absl import flags
from absl.flags import _validators_classes

from adapters_jax.config import loading, schema

Check = Callable[[ml_collections.ConfigDict], None]


def check_method_options(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (naming the valid options) when `method_options` do not fit `method`."""
  from adapters_jax import methods  # imported late: keeps --help fast

  if config.method in methods.PRESETS:
    methods.get_method(config.method, **dict(config.method_options))


class _OverrideFlag(flags.Flag):
  """`--config.KEY=VALUE`: sets one field of the parsed config as soon as it is parsed."""

  def __init__(self, owner: _ConfigFileFlag, key: str, boolean: bool):
    super().__init__(flags.ArgumentParser(), flags.ArgumentSerializer(), f'{owner.name}.{key}',
                     None, f'Sets the field {key} of --{owner.name}.', boolean=boolean)
    self._owner, self._key = owner, key

  def _parse(self, argument):
    text = str(argument).lower() if isinstance(argument, bool) else argument
    try:
      loading.set_field(self._owner.value, self._key, text, self._owner.open_fields)
    except loading.ConfigArgError as e:
      raise flags.IllegalFlagValueError(f'--{self.name}={text}: {e}') from None
    self._owner.overrides.append((self._key, text))
    return text


class _ConfigFileFlag(flags.Flag):
  """`--config=path[:arg]`: loads the file and declares a flag for each `--config.KEY` given."""

  def __init__(self, name: str, help_string: str, open_fields, argv: list[str] | None,
               flag_values: flags.FlagValues):
    self.open_fields = tuple(open_fields)
    self.config_path = ''
    self.overrides: list[tuple[str, str]] = []
    self._argv = argv
    self._flag_values = flag_values
    super().__init__(flags.ArgumentParser(), flags.ArgumentSerializer(), name, None, help_string)

  def _override_keys(self) -> list[str]:
    argv = sys.argv if self._argv is None else self._argv
    pattern = re.compile(rf'^--?(no)?{re.escape(self.name)}\.([^=]+)')
    keys = []
    for arg in argv:
      match = pattern.match(arg)
      if match and match.group(2) not in keys:
        keys.append(match.group(2))
    return keys

  def _parse(self, argument):
    if isinstance(argument, ml_collections.ConfigDict):
      return argument
    try:
      config = loading.load_config(argument)
    except (ValueError, KeyError) as e:  # a bad :arg, a missing file: the config file says why
      raise flags.IllegalFlagValueError(f'--{self.name}={argument}: {e}') from None
    config.lock()
    self.config_path, self.overrides = argument, []
    for key in self._override_keys():
      name = f'{self.name}.{key}'
      if name in self._flag_values:
        continue
      boolean = loading.has_field(config, key) and isinstance(_get(config, key), bool)
      flags.DEFINE_flag(_OverrideFlag(self, key, boolean), self._flag_values)
    return config

  def serialize(self):
    return f'--{self.name}={self.config_path}'


def _get(config: ml_collections.ConfigDict, key: str):
  for part in key.split('.'):
    config = config[part]
  return config


def define_config_flag(name: str = 'config', help_string: str = 'Config file (Python), with an '
                       'optional :arg; override fields with --config.KEY=VALUE.', *,
                       open_fields=schema.OPEN_FIELDS, check: Check | None = check_method_options,
                       argv: list[str] | None = None,
                       flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
  """Defines `--NAME` (see the module docstring); `check(config)` runs once all flags are parsed.

  A ValueError/TypeError from `check` is reported as a flag error (one line), as absl reports a
  bad flag value.
  """
  flag = _ConfigFileFlag(name, help_string, open_fields, argv, flag_values)
  holder = flags.DEFINE_flag(flag, flag_values)
  if check is not None:
    def validate(config):
      if config is None:
        return True
      try:
        check(config)
      except (ValueError, TypeError) as e:
        raise flags.ValidationError(str(e)) from None
      return True
    flag.validators.append(_CheckValidator(name, validate))
  return holder


class _CheckValidator(_validators_classes.SingleFlagValidator):
  """Reports a failed check as `flag --config=<path>: <why>` (absl would print the whole config)."""

  def __init__(self, flag_name, checker):
    super().__init__(flag_name, checker, 'invalid config')

  def print_flags_with_values(self, flag_values):
    flag = flag_values[self.flag_name]
    return f'flag --{self.flag_name}={flag.config_path}'

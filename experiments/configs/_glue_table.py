"""What the GLUE paper tables (`houlsby_glue.py`, `lora_glue.py`) share: the base run of a table,
the paper's numbers as the report wants them, and one evaluation (and checkpoint) per epoch."""

from collections.abc import Mapping, Sequence

import ml_collections

from adapters_jax.config import overrides as config_args
from adapters_jax.sweeps.report import Column
from experiments.configs.common import OPEN_FIELDS, base_config, smoke, split_arg


def table_config(arg: str, **fields) -> ml_collections.ConfigDict:
  """`base_config()` with `fields`, shrunk by `smoke` in the argument, then its key=value items.

  Example: `table_config('smoke,task=mrpc', model='FacebookAI/roberta-base', method='lora')`.
  """
  names, items = split_arg(arg, ('smoke',))
  config = base_config()
  config.update(fields)
  if 'smoke' in names:
    smoke(config)
  return config_args.apply_overrides(config, items, OPEN_FIELDS)


def paper_numbers(columns: Sequence[Column], scores: Mapping[str, Sequence[float]]
                  ) -> dict[tuple[str, str], float]:
  """{(column, row label): score} from each row's scores in column order, then its average."""
  names = [c.name for c in columns] + ['avg']
  return {(column, label): score for label, row in scores.items()
          for column, score in zip(names, row, strict=True)}


def every(steps: int) -> dict[str, int]:
  """Grid items that evaluate and checkpoint every `steps` steps."""
  return {'eval_every_steps': steps, 'checkpoint_every_steps': steps}

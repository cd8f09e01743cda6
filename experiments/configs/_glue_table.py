"""What the GLUE paper tables (`houlsby_glue.py`, `lora_glue.py`) share: the paper's numbers as the
report wants them, and one evaluation (and checkpoint) per epoch."""

from collections.abc import Mapping, Sequence

from adapters_jax.sweeps.report import Column


def paper_numbers(columns: Sequence[Column], scores: Mapping[str, Sequence[float]]
                  ) -> dict[tuple[str, str], float]:
  """{(column, row label): score} from each row's scores in column order, then its average."""
  names = [c.name for c in columns] + ['avg']
  return {(column, label): score for label, row in scores.items()
          for column, score in zip(names, row, strict=True)}


def every(steps: int) -> dict[str, int]:
  """Grid items that evaluate and checkpoint every `steps` steps."""
  return {'eval_every_steps': steps, 'checkpoint_every_steps': steps}

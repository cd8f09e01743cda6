"""Answer inputs with a trained run: its base model plus its best adapter checkpoint.

One `Predictor` serves every task kind: the run is built as training built it (`build_experiment`),
its best leaves are written in, and the kind (`task_kinds.protocol.PredictingKind`) reads the
inputs, runs its jitted prediction step over `data.eval_batches` (padding rows dropped through
`example_mask`) and presents the outputs:

  * encoder runs: `label` and `probabilities` (classification) or `score` (regression);
  * T5 runs: `generated` (the answer decoded as evaluation decodes it) and `label` parsed back (a
    label name, the score for regression; None with `unparseable` True when it names none);
  * decoder runs: `generated`, the continuation of each prompt with the run's own decoding
    settings (`config.lm`: greedy, or beam search), stopping at EOS or after `max_new_tokens`.

Example:
  load_predictor('workdirs/quickstart').predict(['A triumph.', 'Two hours I will never get back.'])
  # [{'label': 'fresh', 'probabilities': {...}}, {'label': 'rotten', ...}]
  load_predictor('workdirs/mini_t5').predict(['A triumph.'])
  # [{'generated': 'fresh', 'label': 'fresh'}]
  load_predictor('workdirs/mini_lm', max_new_tokens=20).predict(['name[The Eagle]'])
  # [{'generated': 'The Eagle is ...'}]

Several adapters over one base: `predict.serving`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from adapters_jax import data
from adapters_jax.predict.runs import read_run
from adapters_jax.splicing.tree import Params
from adapters_jax.task_kinds.inputs import Text
from adapters_jax.task_kinds.protocol import EXAMPLE_MASK, PredictingKind
from adapters_jax.train.experiment import Experiment, build_experiment
from adapters_jax.train.members import load_best


@dataclasses.dataclass
class Predictor:
  """A built run with its best params, answering inputs; see the module docstring.

  Attributes:
    experiment: the run as `build_experiment` builds it (model, tokenizer, config).
    params: the full params with the best trained leaves.
    kind: the run's task kind set up to predict (`for_prediction`).
    batch_size: inputs per jitted call.
  """

  experiment: Experiment
  params: Params
  kind: PredictingKind
  batch_size: int = 64

  def __post_init__(self):
    kind, forward = self.kind, self.experiment.forward
    self._outputs = jax.jit(lambda params, batch: kind.prediction_outputs(forward, params, batch))

  def predict(self, texts: Sequence[Text]) -> list[dict[str, Any]]:
    """Answers each input: a text, a `(text_a, text_b)` pair for pair tasks, or a prompt.

    Returns:
      One dict per input, as the kind presents it (see the module docstring).

    Raises:
      ValueError: an input the run cannot read, naming its number.
    """
    if not texts:
      return []
    dataset = self.kind.prediction_inputs(texts, self.experiment.pretrained.tokenizer,
                                          self.experiment.config.max_length)
    gathered: list[dict[str, np.ndarray]] = []
    for batch in data.eval_batches(dataset, self.batch_size):
      outputs = self._outputs(self.params, batch)
      real = batch[EXAMPLE_MASK] > 0
      gathered.append({k: np.asarray(v)[real] for k, v in outputs.items()})
    return self.kind.present({k: np.concatenate([g[k] for g in gathered]) for k in gathered[0]})


def load_predictor(workdir: str, batch_size: int = 64,
                   max_new_tokens: int | None = None) -> Predictor:
  """The predictor of the run in `workdir`, whatever its task kind.

  Args:
    batch_size: inputs per jitted call.
    max_new_tokens: decoder runs: tokens generated per prompt at most (None: the run's
      `config.lm.max_new_tokens`).

  Raises:
    ValueError: `max_new_tokens` for a run that is no decoder run.
  """
  run = read_run(workdir)
  experiment = build_experiment(run.config, run.spec)
  kind = experiment.task_kind.for_prediction(run.config, max_new_tokens)
  return Predictor(experiment, load_best(experiment, run.workdir), kind, batch_size)

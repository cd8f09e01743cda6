"""Label texts with a trained run: the base model plus the best adapter checkpoint of a workdir.

    predictor = Predictor.from_workdir('workdirs/quickstart')
    predictor.predict(['A triumph.', 'Two hours I will never get back.'])
    # [{'label': 'fresh', 'probabilities': {...}}, {'label': 'rotten', ...}]
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from adapters_jax import checkpoint, data
from adapters_jax.train import loop
from adapters_jax.train.experiment import Experiment, build_experiment


def spec_from_record(config: ml_collections.ConfigDict, record: dict[str, Any]) -> data.TaskSpec:
  """The task spec of a run: the registered one, or rebuilt from the checkpoint record (local files,
  so that predicting does not need the training files)."""
  if config.task != 'local':
    return data.get_task(config.task)
  label_names = record['extra'].get('label_names')
  metric = 'pearson' if label_names is None else 'accuracy'
  return data.TaskSpec(name=config.local_task.name, text_fields=tuple(config.local_task.text_columns),
                       label_names=tuple(label_names) if label_names else None,
                       metric_names=(metric,), primary_metric=metric, source='local')


@dataclasses.dataclass
class Predictor:
  """A base model with one run's best trained leaves, ready to label texts."""

  experiment: Experiment
  params: dict[str, Any]
  batch_size: int = 64

  def __post_init__(self):
    self._logits = jax.jit(
        lambda params, batch: self.experiment.logits(params, batch, deterministic=True))

  @classmethod
  def from_workdir(cls, workdir: str, batch_size: int = 64) -> Predictor:
    with open(os.path.join(workdir, loop.CONFIG_FILE)) as f:
      config = ml_collections.ConfigDict(json.load(f))
    record = checkpoint.load_record(os.path.join(workdir, loop.BEST_DIR))
    experiment = build_experiment(config, spec_from_record(config, record))
    params = loop.load_best(experiment, workdir)
    return cls(experiment=experiment, params=params, batch_size=batch_size)

  def predict(self, texts: Sequence[str | tuple[str, str]]) -> list[dict[str, Any]]:
    """Labels each text (or (text_a, text_b) pair for pair tasks).

    Returns:
      Per input: `label` and `probabilities` (classification) or `score` (regression).
    """
    spec = self.experiment.spec
    examples = []
    for i, text in enumerate(texts):
      pair = (text, None) if isinstance(text, str) else tuple(text)
      if (pair[1] is not None) != spec.is_pair:
        raise ValueError(f'Input {i + 1}: task {spec.name!r} takes '
                         f'{"text pairs (two tab-separated texts)" if spec.is_pair else "one text"}.')
      examples.append(data.Example(text_a=pair[0], text_b=pair[1], label=0, idx=i))
    if not examples:
      return []
    encoded = data.encode(examples, self.experiment.pretrained.tokenizer,
                          self.experiment.config.max_length)
    outputs = []
    for batch in data.eval_batches(encoded, self.batch_size):
      logits = self._logits(self.params, batch)
      outputs.append(np.asarray(logits)[batch['example_mask'] > 0])
    logits = np.concatenate(outputs)
    if spec.is_regression:
      return [{'score': float(row[0])} for row in logits]
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    return [{'label': spec.label_names[int(np.argmax(p))],
             'probabilities': {name: float(v) for name, v in zip(spec.label_names, p, strict=True)}}
            for p in probabilities]

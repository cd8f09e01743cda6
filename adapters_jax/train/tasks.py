"""Task kinds: what the training loop needs from a (task, model) pair, behind one interface.

The loop shards batches, steps, evaluates, logs and checkpoints; it never looks inside a batch or a
model output. Everything that depends on what is being learnt lives in a `TaskKind`:

  * `loss(forward, params, batch, rng)`: the training loss of a batch, model forward included
    (jitted inside the train step; differentiated with respect to the trainable leaves of `params`);
  * `eval_outputs(forward, params, batch)`: what evaluation keeps of a batch (jitted; every value
    has a leading batch axis, e.g. logits, generated token ids, per-example summed NLL and token
    counts); padding rows are dropped later through the batch's `example_mask`, which the loop
    passes along;
  * `metrics(outputs)`: the metrics of a whole split on the host, from the concatenated outputs
    of all its batches (numpy, padding rows already removed).

Batch keys are the task kind's business: the data pipeline that feeds a kind and the kind agree on
them (classification and regression read `input_ids`, `attention_mask`, `token_type_ids`, `labels`,
`example_mask`). `forward(params, *args, rng=None, **kwargs)` is the spliced model with the run's
adapter active: training mode with dropout when `rng` is a key, deterministic when it is None;
positional and keyword arguments go to the model unchanged (a sequence-to-sequence kind passes
decoder inputs, a generating kind a `method=`).

A sequence-to-sequence kind (teacher-forced cross-entropy; greedy decoding in `eval_outputs`;
decoded strings mapped back to labels in `metrics`) or a causal-LM kind (prompt masked from the
loss; perplexity from summed NLL and token counts) implements these three methods and is returned
by `task_kind_for`; the loop does not change.

Example:
  kind = task_kind_for(spec)
  loss = kind.loss(experiment.forward, params, batch, rng)            # scalar
  outputs = kind.eval_outputs(experiment.forward, params, batch)      # {'logits': [B, K], ...}
  kind.metrics(outputs_of_the_whole_split)                            # {'accuracy': ..., ...}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import numpy as np

from adapters_jax import data
from adapters_jax.train.step import classification_loss, regression_loss
from adapters_jax.tree import Params

Batch = dict[str, jax.Array]
EXAMPLE_MASK = 'example_mask'  # [batch] 1 for real examples, 0 for padding rows


class Forward(Protocol):
  """The spliced model: `forward(params, *args, rng=None, **kwargs) -> model output`."""

  def __call__(self, params: Params, *args: Any, rng: jax.Array | None = None,
               **kwargs: Any) -> Any: ...


class TaskKind(Protocol):
  """What the loop needs from a task; see the module docstring."""

  def loss(self, forward: Forward, params: Params, batch: Batch, rng: jax.Array) -> jax.Array:
    """Scalar training loss of `batch` (mean over its real examples)."""
    ...

  def eval_outputs(self, forward: Forward, params: Params, batch: Batch) -> dict[str, jax.Array]:
    """Per-example evaluation outputs of `batch`, each with a leading [batch] axis."""
    ...

  def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics of a whole split from its gathered outputs (padding rows removed)."""
    ...


def _encoder_inputs(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  return batch['input_ids'], batch['attention_mask'], batch['token_type_ids']  # each [B, L]


@dataclasses.dataclass(frozen=True)
class Classification:
  """Single-label classification: softmax cross-entropy on the head's logits; GLUE-style metrics."""

  spec: data.TaskSpec

  def loss(self, forward: Forward, params: Params, batch: Batch, rng: jax.Array) -> jax.Array:
    logits = forward(params, *_encoder_inputs(batch), rng=rng)  # [B, num_labels]
    return classification_loss(logits, batch['labels'], batch[EXAMPLE_MASK])

  def eval_outputs(self, forward: Forward, params: Params, batch: Batch) -> dict[str, jax.Array]:
    logits = forward(params, *_encoder_inputs(batch))  # [B, num_labels]
    return {'logits': logits.astype(np.float32), 'labels': batch['labels']}

  def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    return data.compute_metrics(self.spec, outputs['logits'], outputs['labels'])


@dataclasses.dataclass(frozen=True)
class Regression:
  """Scalar regression (STS-B): squared error on the head's single output; correlations."""

  spec: data.TaskSpec

  def loss(self, forward: Forward, params: Params, batch: Batch, rng: jax.Array) -> jax.Array:
    scores = forward(params, *_encoder_inputs(batch), rng=rng)  # [B, 1]
    return regression_loss(scores, batch['labels'], batch[EXAMPLE_MASK])

  def eval_outputs(self, forward: Forward, params: Params, batch: Batch) -> dict[str, jax.Array]:
    scores = forward(params, *_encoder_inputs(batch))  # [B, 1]
    return {'scores': scores[:, 0].astype(np.float32), 'labels': batch['labels']}

  def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    return data.compute_metrics(self.spec, outputs['scores'], outputs['labels'])


def task_kind_for(spec: data.TaskSpec) -> TaskKind:
  """The task kind that trains and evaluates `spec`."""
  return Regression(spec) if spec.is_regression else Classification(spec)

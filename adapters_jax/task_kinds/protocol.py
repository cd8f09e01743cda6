"""Task kinds: everything task-specific the training loop needs, behind one interface.

The loop loads, shards, steps, evaluates, logs, checkpoints and resumes; it never looks inside a
batch or a model output. Everything that depends on what is being learnt lives in a task kind, in
two steps:

Before the model exists, the kind's class (a `TaskKindFactory`) says how to load it:
  * `load_arguments(spec)`: the keyword arguments of `models.load_pretrained` that give the model
    call the kind needs (`{'head': 'classification', 'num_labels': 3}`; a sequence-to-sequence or
    causal-LM kind: `{'head': None}`, the model's own LM head);
  * `create(spec, pretrained, config)`: the kind, bound to the loaded model (its tokenizer, its
    config: start/EOS/pad ids, vocabulary) and the run's config.

The kind then owns:
  * `sample_call()`: `(args, kwargs)` of one host call, whose shapes discover the splice sites
    (an encoder: `(ids, mask, type_ids)`; T5: `(ids, mask, decoder_ids)`; a decoder: `(ids, mask)`);
  * `model_inputs(batch)`: the positional arguments of the model call on a batch (what a report
    that inspects the model, such as AdapterFusion's attention plot, runs);
  * `encode(examples, tokenizer, max_length)`: a split's `data.Example`s as a dataset that
    batching can pad (`data.BatchSource`: `data.EncodedDataset` for classification and
    regression; the generic `data.SequenceDataset` of named token sequences, padded per key to
    their own length buckets, for generative kinds). Its batch keys are the kind's business, plus
    `example_mask` (float32 [B], 0 on evaluation padding rows), which every batch has;
  * `loss(forward, params, batch, rng)`: the scalar training loss of a batch, model forward
    included (jitted inside the train step; differentiated w.r.t. the trainable leaves);
  * `eval_outputs(forward, params, batch)`: what evaluation keeps of a batch (jitted; every value
    has a leading batch axis: logits, generated token ids, per-example summed NLL and token
    counts); padding rows are dropped later through `example_mask`;
  * `metrics(outputs)`: the metrics of a whole split on the host, from the concatenated outputs of
    all its batches (numpy, padding rows removed); generative kinds decode token ids to strings
    here (host code, so any tokenizer and any metric library may run).

Prediction (`predict.Predictor`) asks three more things of a kind (`PredictingKind`):
  * `for_prediction(config, max_new_tokens)`: the kind set up to predict (a causal-LM kind takes
    the run's generation settings, `max_new_tokens` overriding theirs; the others refuse
    `max_new_tokens`);
  * `prediction_inputs(texts, tokenizer, max_length)`: the user's inputs (`task_kinds.inputs`) as a
    dataset that `data.eval_batches` pads;
  * `prediction_outputs(forward, params, batch)`: what is kept of a batch (jitted; leading [batch]
    axis), and `present(outputs)`: one JSON-ready dict per input (a label and its probabilities,
    a score, a parsed answer, generated text).

`forward(params, *args, rng=None, **kwargs)` is the spliced model with the run's adapter active:
training mode with dropout when `rng` is a key, deterministic when it is None; positional and
keyword arguments go to the model unchanged (`method='encode'` calls another method of the model,
which is how a generating kind drives a cached decoding loop inside `eval_outputs`).

Kinds: `Classification` and `Regression` (here; encoder with a task head), `Seq2Seq`
(`task_kinds.seq2seq`: text-to-text, teacher-forced cross-entropy, greedy decoding, label words
parsed back) and `CausalLM` (`task_kinds.causal_lm`: completion-token cross-entropy, perplexity,
generation); `task_kinds.choice` chooses the kind of a run from the model's family or
`config.task_kind`.

Example:
  factory = kinds.kind_factory(spec, model_type='bert', requested='')   # Classification
  pretrained = models.load_pretrained(path, **factory.load_arguments(spec))
  kind = factory.create(spec, pretrained, config)
  train = kind.encode(task['train'], pretrained.tokenizer, max_length=128)
  loss = kind.loss(experiment.forward, params, batch, rng)            # scalar
  outputs = kind.eval_outputs(experiment.forward, params, batch)      # {'logits': [B, K], ...}
  kind.metrics(outputs_of_the_whole_split)                            # {'accuracy': ..., ...}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adapters_jax import data
from adapters_jax.splicing.discovery import sample_ids
from adapters_jax.splicing.tree import Params
from adapters_jax.task_kinds.inputs import Text, unlabelled_examples
from adapters_jax.train.step import classification_loss, regression_loss

Batch = dict[str, jax.Array]
EXAMPLE_MASK = 'example_mask'  # [batch] 1 for real examples, 0 for padding rows
SampleCall = tuple[tuple[Any, ...], dict[str, Any]]


class Forward(Protocol):
  """The spliced model: `forward(params, *args, rng=None, **kwargs) -> model output`."""

  def __call__(self, params: Params, *args: Any, rng: jax.Array | None = None,
               **kwargs: Any) -> Any: ...


class TaskKind(Protocol):
  """What the loop needs from a task; see the module docstring."""

  def sample_call(self) -> SampleCall:
    """`(args, kwargs)` of one host call, for the shapes of a splice."""
    ...

  def model_inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    """Positional arguments of the model call on `batch`."""
    ...

  def encode(self, examples: Sequence[data.Example], tokenizer, max_length: int
             ) -> data.BatchSource:
    """A split's examples as a dataset that batching pads into this kind's batches."""
    ...

  def loss(self, forward: Forward, params: Params, batch: Batch, rng: jax.Array) -> jax.Array:
    """Scalar training loss of `batch` (mean over its real examples or tokens)."""
    ...

  def eval_outputs(self, forward: Forward, params: Params, batch: Batch) -> dict[str, jax.Array]:
    """Per-example evaluation outputs of `batch`, each with a leading [batch] axis."""
    ...

  def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics of a whole split from its gathered outputs (padding rows removed)."""
    ...


class PredictingKind(Protocol):
  """What a predictor needs from a task kind; see the module docstring."""

  def for_prediction(self, config: ml_collections.ConfigDict,
                     max_new_tokens: int | None) -> PredictingKind:
    """The kind set up to predict with the run's `config`.

    Raises:
      ValueError: `max_new_tokens` given to a kind that generates no free text.
    """
    ...

  def prediction_inputs(self, texts: Sequence[Text], tokenizer, max_length: int
                        ) -> data.BatchSource:
    """The inputs (texts, pairs or prompts) as a dataset of this kind's batches.

    Raises:
      ValueError: an input the kind cannot read, naming its number and the fix.
    """
    ...

  def prediction_outputs(self, forward: Forward, params: Params, batch: Batch
                         ) -> dict[str, jax.Array]:
    """Per-example prediction outputs of `batch`, each with a leading [batch] axis (jitted)."""
    ...

  def present(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One JSON-ready dict per example from the gathered outputs (padding rows removed)."""
    ...


def refuse_max_new_tokens(kind: Any, max_new_tokens: int | None) -> None:
  """Raises ValueError when `max_new_tokens` is given to `kind`, which generates no free text."""
  if max_new_tokens is not None:
    raise ValueError(f'max_new_tokens applies to decoder (causal LM) runs; this is a '
                     f'{type(kind).__name__} run.')


class TaskKindFactory(Protocol):
  """A task kind before the model is loaded; see the module docstring."""

  def load_arguments(self, spec: data.TaskSpec) -> dict[str, Any]:
    """Keyword arguments of `models.load_pretrained` (`head`, `num_labels`)."""
    ...

  def create(self, spec: data.TaskSpec, pretrained, config: ml_collections.ConfigDict
             ) -> TaskKind:
    """The kind bound to the loaded model (`models.Pretrained`) and the run's config."""
    ...


def encoder_sample_call() -> SampleCall:
  """An encoder's call `(ids, mask, type_ids)` on a [2, 16] batch."""
  sample = sample_ids()  # [batch, seq]
  return (sample, sample, jnp.zeros_like(sample)), {'deterministic': True}


@dataclasses.dataclass(frozen=True)
class _EncoderKind:
  """An encoder with a task head on `data.encode`'s batches: `input_ids`, `attention_mask`,
  `token_type_ids` [B, L], `labels` [B], `example_mask` [B]."""

  spec: data.TaskSpec

  @classmethod
  def load_arguments(cls, spec: data.TaskSpec) -> dict[str, Any]:
    return {'head': 'classification', 'num_labels': spec.num_labels}

  @classmethod
  def create(cls, spec: data.TaskSpec, pretrained=None, config=None) -> _EncoderKind:
    return cls(spec)

  def sample_call(self) -> SampleCall:
    return encoder_sample_call()

  def model_inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    return batch['input_ids'], batch['attention_mask'], batch['token_type_ids']  # each [B, L]

  def encode(self, examples: Sequence[data.Example], tokenizer, max_length: int
             ) -> data.EncodedDataset:
    return data.encode(examples, tokenizer, max_length)

  def for_prediction(self, config: ml_collections.ConfigDict,
                     max_new_tokens: int | None) -> _EncoderKind:
    refuse_max_new_tokens(self, max_new_tokens)
    return self

  def prediction_inputs(self, texts: Sequence[Text], tokenizer, max_length: int
                        ) -> data.EncodedDataset:
    return data.encode(unlabelled_examples(texts, self.spec), tokenizer, max_length)

  def prediction_outputs(self, forward: Forward, params: Params, batch: Batch
                         ) -> dict[str, jax.Array]:
    return self.eval_outputs(forward, params, batch)


@dataclasses.dataclass(frozen=True)
class Classification(_EncoderKind):
  """Single-label classification: softmax cross-entropy on the head's logits; GLUE-style metrics."""

  def loss(self, forward: Forward, params: Params, batch: Batch, rng: jax.Array) -> jax.Array:
    logits = forward(params, *self.model_inputs(batch), rng=rng)  # [B, num_labels]
    return classification_loss(logits, batch['labels'], batch[EXAMPLE_MASK])

  def eval_outputs(self, forward: Forward, params: Params, batch: Batch) -> dict[str, jax.Array]:
    logits = forward(params, *self.model_inputs(batch))  # [B, num_labels]
    return {'logits': logits.astype(np.float32), 'labels': batch['labels']}

  def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    return data.compute_metrics(self.spec, outputs['logits'], outputs['labels'])

  def present(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per example: `label` (the most probable) and `probabilities` (label name -> softmax of
    the logits [N, num_labels])."""
    names = self.spec.label_names
    probabilities = np.asarray(jax.nn.softmax(np.asarray(outputs['logits'], np.float32), axis=-1))
    return [{'label': names[int(np.argmax(p))],
             'probabilities': {name: float(v) for name, v in zip(names, p, strict=True)}}
            for p in probabilities]


@dataclasses.dataclass(frozen=True)
class Regression(_EncoderKind):
  """Scalar regression (STS-B): squared error on the head's single output; correlations."""

  def loss(self, forward: Forward, params: Params, batch: Batch, rng: jax.Array) -> jax.Array:
    scores = forward(params, *self.model_inputs(batch), rng=rng)  # [B, 1]
    return regression_loss(scores, batch['labels'], batch[EXAMPLE_MASK])

  def eval_outputs(self, forward: Forward, params: Params, batch: Batch) -> dict[str, jax.Array]:
    scores = forward(params, *self.model_inputs(batch))  # [B, 1]
    return {'scores': scores[:, 0].astype(np.float32), 'labels': batch['labels']}

  def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    return data.compute_metrics(self.spec, outputs['scores'], outputs['labels'])

  def present(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per example: `score`, the head's output (`scores` [N])."""
    return [{'score': float(score)} for score in outputs['scores']]

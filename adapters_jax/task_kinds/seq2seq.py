"""The sequence-to-sequence task kind: a task as text-to-text on an encoder-decoder (T5).

Examples become `data.text_to_text` strings (`rte sentence1: ... sentence2: ...` ->
`not_entailment`), tokenised into a `data.SequenceDataset` whose batches hold
  input_ids       int32 [B, S]   the input, with the tokenizer's special tokens, pad id after it
  attention_mask  int32 [B, S]   1 on input tokens
  target_ids      int32 [B, T]   the target's tokens then EOS (the model's `eos_token_id`), pad after
  target_mask     int32 [B, T]   1 on target tokens and EOS
  labels          [B]            the class id (int32) or score (float32) the metrics compare with
  example_mask    float32 [B]
Training: teacher-forced token cross-entropy (decoder inputs = targets shifted right behind the
start token), averaged over the batch's real target tokens; padding positions and padding rows
weigh nothing. Evaluation: greedy decoding with the key/value cache (`models.greedy_generate`,
inside the jitted evaluation step) for as many tokens as the longest possible target; on the host
the tokens up to EOS are decoded and parsed back to labels (`text_to_text.parse_label`). An
unparseable output counts as wrong: it becomes a class other than the gold one (classification)
or -1.0 (regression, as T5's postprocessing); `unparseable` (their count) is reported beside the
task's metrics.

Example:
  kind = Seq2Seq.create(spec, pretrained, config)
  train = kind.encode(task['train'], pretrained.tokenizer, max_length=128)
  loss = kind.loss(forward, params, batch, rng)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adapters_jax import data
from adapters_jax.data import text_to_text
from adapters_jax.models import greedy_generate, shift_right
from adapters_jax.models.t5_config import T5Config
from adapters_jax.splicing.discovery import sample_ids
from adapters_jax.splicing.tree import Params
from adapters_jax.task_kinds.inputs import Text, unlabelled_examples
from adapters_jax.task_kinds.protocol import (
  EXAMPLE_MASK,
  Batch,
  Forward,
  SampleCall,
  refuse_max_new_tokens,
)

UNPARSEABLE = 'unparseable'  # metric: how many generated outputs named no label
REGRESSION_UNPARSEABLE = -1.0  # the score of an unparseable STS-B output (T5: string_to_float)


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean token cross-entropy over the weighted positions.

  Args:
    logits: [B, T, vocab] float.
    targets: [B, T] int token ids.
    weights: [B, T] float, 0 on padding positions and padding rows.

  Returns:
    sum(weights * -log p(target)) / max(sum(weights), 1), a float32 scalar.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, T, V]
  nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  weights = weights.astype(jnp.float32)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _model_type(pretrained) -> str:
  return type(pretrained.config).__name__


@dataclasses.dataclass(frozen=True)
class Seq2Seq:
  """Text-to-text on T5; see the module docstring.

  Attributes:
    spec: the task.
    tokenizer: the model's tokenizer (encodes inputs and targets, decodes generations).
    model_config: the T5 config (start, EOS and pad ids; cache shapes).
    max_target_length: tokens of the longest possible target, EOS included; targets are padded
      to its buckets and generation runs this many steps at most.
  """

  spec: data.TaskSpec
  tokenizer: Any
  model_config: T5Config
  max_target_length: int

  @classmethod
  def load_arguments(cls, spec: data.TaskSpec) -> dict[str, Any]:
    return {'head': None}

  @classmethod
  def create(cls, spec: data.TaskSpec, pretrained, config: ml_collections.ConfigDict | None = None
             ) -> Seq2Seq:
    """The kind for `spec` on a loaded T5 (`models.Pretrained` with its tokenizer)."""
    if not isinstance(pretrained.config, T5Config):
      raise ValueError(f'task_kind=seq2seq needs an encoder-decoder (T5) model, not a '
                       f'{_model_type(pretrained)}; pick a T5 checkpoint or another task_kind.')
    if pretrained.tokenizer is None:
      raise ValueError('task_kind=seq2seq needs the model\'s tokenizer (load it with the model).')
    longest = max(len(_target_ids(pretrained.tokenizer, t, pretrained.config.eos_token_id))
                  for t in text_to_text.possible_targets(spec))
    return cls(spec, pretrained.tokenizer, pretrained.config, longest)

  def sample_call(self) -> SampleCall:
    ids = sample_ids()  # [batch, src]
    decoder_ids = sample_ids((2, 4))  # [batch, tgt]
    return (ids, ids, decoder_ids), {'deterministic': True}

  def model_inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    """`(input_ids, attention_mask, decoder_input_ids)`: the teacher-forced call."""
    return (batch['input_ids'], batch['attention_mask'],
            shift_right(batch['target_ids'], self.model_config))

  def encode(self, examples: Sequence[data.Example], tokenizer, max_length: int
             ) -> data.SequenceDataset:
    """Inputs truncated to `max_length` tokens (special tokens included); targets as
    `_target_ids` (an unlabelled example's target is EOS alone)."""
    if not examples:
      raise ValueError('encode() got no examples.')
    eos = self.model_config.eos_token_id
    sources = tokenizer([text_to_text.source_text(self.spec, e) for e in examples],
                        truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False)['input_ids']
    targets = [_target_ids(tokenizer, None if e.label == data.NO_LABEL else
                           text_to_text.target_text(self.spec, e.label), eos) for e in examples]
    pad = self.model_config.pad_token_id
    labels = np.asarray([e.label for e in examples],
                        np.float32 if self.spec.is_regression else np.int32)
    return data.SequenceDataset(
        sequences={
            'input_ids': data.Ragged.from_rows(sources, pad_value=pad, max_length=max_length,
                                               mask_key='attention_mask'),
            'target_ids': data.Ragged.from_rows(targets, pad_value=pad,
                                                max_length=self.max_target_length,
                                                mask_key='target_mask'),
        },
        fields={'labels': labels}, length_key='input_ids')

  def loss(self, forward: Forward, params: Params, batch: Batch, rng: jax.Array) -> jax.Array:
    logits = forward(params, *self.model_inputs(batch), rng=rng)  # [B, T, vocab]
    weights = batch['target_mask'] * batch[EXAMPLE_MASK][:, None]  # [B, T]
    return token_cross_entropy(logits, batch['target_ids'], weights)

  def eval_outputs(self, forward: Forward, params: Params, batch: Batch) -> dict[str, jax.Array]:
    tokens = greedy_generate(forward, self.model_config, params, batch['input_ids'],
                             batch['attention_mask'], self.max_target_length)  # [B, T_max]
    return {'tokens': tokens, 'labels': batch['labels']}

  def decode(self, tokens: np.ndarray) -> list[str]:
    """Generated rows [N, T] -> strings: the tokens before the first EOS, special tokens
    dropped."""
    eos = self.model_config.eos_token_id
    rows = []
    for row in np.asarray(tokens):
      end = np.flatnonzero(row == eos)
      rows.append(row[:end[0]] if len(end) else row)
    return [t.strip() for t in self.tokenizer.batch_decode([r.tolist() for r in rows],
                                                           skip_special_tokens=True)]

  def predictions(self, texts: Sequence[str], labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Parsed predictions [N] (unparseable ones made wrong, see the module docstring) and how
    many were unparseable."""
    parsed = [text_to_text.parse_label(self.spec, t) for t in texts]
    bad = sum(p is None for p in parsed)
    if self.spec.is_regression:
      return np.asarray([REGRESSION_UNPARSEABLE if p is None else p for p in parsed],
                        np.float64), bad
    wrong = (np.asarray(labels, np.int64) + 1) % self.spec.num_labels  # a class != the gold one
    return np.asarray([w if p is None else p for p, w in zip(parsed, wrong, strict=True)],
                      np.int64), bad

  def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    predictions, bad = self.predictions(self.decode(outputs['tokens']), outputs['labels'])
    return {**data.compute_metrics(self.spec, predictions, outputs['labels']),
            UNPARSEABLE: float(bad)}

  def for_prediction(self, config: ml_collections.ConfigDict,
                     max_new_tokens: int | None) -> Seq2Seq:
    refuse_max_new_tokens(self, max_new_tokens)
    return self

  def prediction_inputs(self, texts: Sequence[Text], tokenizer, max_length: int
                        ) -> data.SequenceDataset:
    """Texts (pairs for pair tasks) written as training wrote the task's inputs, unlabelled."""
    return self.encode(unlabelled_examples(texts, self.spec), tokenizer, max_length)

  def prediction_outputs(self, forward: Forward, params: Params, batch: Batch
                         ) -> dict[str, jax.Array]:
    return self.eval_outputs(forward, params, batch)

  def present(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per example `answer_fields` of its decoded answer (`tokens` [N, T])."""
    return [answer_fields(self.spec, answer) for answer in self.decode(outputs['tokens'])]


def answer_fields(spec: data.TaskSpec, answer: str) -> dict[str, Any]:
  """A T5 answer as output: `generated`, and `label` parsed back as evaluation parses it (the
  label's name; regression: the score); None, with `unparseable` True, when it names none."""
  parsed = text_to_text.parse_label(spec, answer)
  if parsed is None:
    return {'generated': answer, 'label': None, UNPARSEABLE: True}
  return {'generated': answer,
          'label': float(parsed) if spec.is_regression else spec.label_names[parsed]}


def _target_ids(tokenizer, text: str | None, eos_token_id: int) -> list[int]:
  """The target's token ids without the tokenizer's special tokens, then EOS."""
  if text is None:
    return [eos_token_id]
  return list(tokenizer(text, add_special_tokens=False)['input_ids']) + [eos_token_id]

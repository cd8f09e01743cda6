"""The causal-LM task kind: next-token cross-entropy on completion tokens only; perplexity; and,
for generation tasks, jit-compiled generation from the prompt scored by the task's text metrics.

Batches are rows of `data.lm_packing` (`input_ids`, `attention_mask`, `positions`,
`segment_ids`, `targets`, `weights`, each `[rows, L]`); training rows may be packed. Evaluation
rows hold one example each, so per-row sums are per-example sums; a generation task's evaluation
batches add the left-padded prompts (`prompt_ids`, `prompt_mask` `[rows, P]`) and each row's
`example_index` into the split (for its references).

  * loss: mean over real target tokens of the token cross-entropy, with optional label smoothing
    `(1 - a) * nll + a * mean_v(-log p_v)` (the LoRA paper's E2E recipe uses a = 0.1);
  * eval outputs: per-row summed NLL (no smoothing) and target-token counts, plus the generated
    tokens for a generation task;
  * metrics: `loss` (mean NLL per target token over the split), `perplexity` = exp(loss),
    `log_likelihood` = -loss (higher is better, for model selection), and the task's text
    metrics on the decoded generations.

Example:
  kind = CausalLM(label_smoothing=0.1)
  loss = kind.loss(forward, params, batch, rng)                   # scalar
  kind.metrics(outputs_of_the_whole_split)                        # {'perplexity': ..., ...}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax.models.generation import GenerationConfig, generate_traced

Batch = dict[str, jax.Array]


def token_losses(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-token cross-entropy `[B, L]` float32 of `logits` `[B, L, V]` against `targets` `[B, L]`.

  With `label_smoothing` a: `(1 - a) * nll + a * mean over the vocabulary of -log p`.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, L, V]
  nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if label_smoothing == 0.0:
    return nll
  return (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)


def lm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
            label_smoothing: float = 0.0) -> jax.Array:
  """Mean token cross-entropy over the tokens with weight 1 (`weights` `[B, L]`): a scalar."""
  losses = token_losses(logits, targets, label_smoothing)
  weights = weights.astype(jnp.float32)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def row_nll(logits: jax.Array, targets: jax.Array,
            weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-row summed NLL `[B]` and target-token count `[B]` (float32), no smoothing."""
  weights = weights.astype(jnp.float32)
  return (jnp.sum(token_losses(logits, targets) * weights, axis=-1), jnp.sum(weights, axis=-1))


def perplexity_metrics(nll_sums: np.ndarray, token_counts: np.ndarray) -> dict[str, float]:
  """`loss`, `perplexity`, `log_likelihood` of a split from per-example NLL sums and counts."""
  tokens = float(np.sum(token_counts, dtype=np.float64))
  if tokens == 0:
    raise ValueError('No target tokens in the split: every completion was cut off; raise '
                     'max_length.')
  loss = float(np.sum(nll_sums, dtype=np.float64)) / tokens
  return {'loss': loss, 'perplexity': float(np.exp(loss)), 'log_likelihood': -loss}


def model_inputs(batch: Batch) -> tuple[tuple[jax.Array, ...], dict[str, jax.Array]]:
  """The decoder's call on a batch of rows: `(ids, mask, positions)`, `segment_ids=`."""
  return ((batch['input_ids'], batch['attention_mask'], batch['positions']),
          {'segment_ids': batch['segment_ids']})


@dataclasses.dataclass(frozen=True)
class Generation:
  """How a generation task evaluates: generate from the prompt, decode, score against references.

  Attributes:
    config: greedy/sampling settings, EOS and pad ids (`GenerationConfig`).
    model_config: the decoder's `DecoderConfig` (cache shapes).
    decode_tokens: `(token ids [n], length) -> text`, e.g. the tokenizer's decode.
    references: per example of the split, its reference texts (`example_index` indexes it).
    score: `(predictions, references) -> metrics`, e.g. `text_metrics.e2e_metrics`.
  """

  config: GenerationConfig
  model_config: Any
  decode_tokens: Callable[[np.ndarray], str]
  references: Sequence[Sequence[str]]
  score: Callable[[list[str], list[list[str]]], dict[str, float]]

  def __hash__(self):  # a static part of jitted evaluation: identity is enough
    return id(self)

  def __eq__(self, other):
    return self is other


@dataclasses.dataclass(frozen=True)
class CausalLM:
  """The task kind (`train.tasks.TaskKind`) of decoder-only language modelling.

  Attributes:
    label_smoothing: of the training loss (evaluation NLL never smooths).
    generation: set for generation tasks (E2E): evaluation also generates and scores.
  """

  label_smoothing: float = 0.0
  generation: Generation | None = None

  def loss(self, forward, params, batch: Batch, rng: jax.Array) -> jax.Array:
    args, kwargs = model_inputs(batch)
    logits = forward(params, *args, rng=rng, **kwargs)  # [B, L, V]
    return lm_loss(logits, batch['targets'], batch['weights'], self.label_smoothing)

  def eval_outputs(self, forward, params, batch: Batch) -> dict[str, jax.Array]:
    args, kwargs = model_inputs(batch)
    logits = forward(params, *args, **kwargs)  # [B, L, V]
    nll, count = row_nll(logits, batch['targets'], batch['weights'])
    outputs = {'nll_sum': nll, 'target_tokens': count}
    if self.generation is not None:
      def decode(p, ids, mask, cache):
        return forward(p, ids, mask, cache, method='decode', last_only=True)

      generated = generate_traced(decode, self.generation.model_config, params,
                                  batch['prompt_ids'], batch['prompt_mask'],
                                  self.generation.config)
      outputs.update(generated=generated.tokens, generated_length=generated.lengths,
                     example_index=batch['example_index'])
    return outputs

  def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    metrics = perplexity_metrics(outputs['nll_sum'], outputs['target_tokens'])
    if self.generation is None:
      return metrics
    gen = self.generation
    predictions = [gen.decode_tokens(tokens[:length]) for tokens, length
                   in zip(outputs['generated'], outputs['generated_length'], strict=True)]
    references = [list(gen.references[i]) for i in outputs['example_index']]
    return {**metrics, **gen.score(predictions, references)}

"""The causal-LM task kind: next-token cross-entropy on completion tokens only; perplexity; and,
for generation tasks, jit-compiled generation from the prompt (greedy or beam search) scored by the
task's generation metrics (`GENERATION_SCORERS`: text overlap for E2E, parsed-answer accuracy for
MetaMathQA/GSM8K).

Splits are `data.LMDataset`s of `LMRecord`s (`encode`): batches of rows (`input_ids`,
`attention_mask`, `positions`, `segment_ids`, `targets`, `weights`, each `[rows, L]`), packed
when `pack` (perplexity needs only totals, so packed evaluation rows are fine). A generation
task's rows hold one example each and add the left-padded prompts (`prompt_ids`, `prompt_mask`
`[rows, P]`) and each row's `example_index` (for its references).

  * loss: mean over real target tokens of the token cross-entropy, with optional label smoothing
    `(1 - a) * nll + a * mean_v(-log p_v)` (the LoRA paper's E2E recipe uses a = 0.1);
  * eval outputs: per-row summed NLL (no smoothing) and target-token counts, plus the generated
    tokens for a generation task;
  * metrics: `loss` (mean NLL per target token over the split), `perplexity` = exp(loss),
    `log_likelihood` = -loss (higher is better, for model selection), and the task's text
    metrics on the decoded generations.

Example:
  kind = CausalLM.create(spec, pretrained, config)          # config.lm: smoothing, packing, ...
  train = kind.encode(task['train'], pretrained.tokenizer, max_length=512)
  loss = kind.loss(forward, params, batch, rng)             # scalar
  kind.metrics(outputs_of_the_whole_split)                  # {'perplexity': ..., 'bleu': ...}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adapters_jax.data import math_answers, text_metrics
from adapters_jax.data.lm_dataset import LMDataset
from adapters_jax.data.lm_jsonl import LMRecord, eos_id, tokenize_records
from adapters_jax.models.beam_search import BeamSearchConfig, beam_search_traced
from adapters_jax.models.generation import GenerationConfig, GenerationOutput, generate_traced
from adapters_jax.splicing.discovery import sample_ids
from adapters_jax.task_kinds.inputs import Text, prompt_records

Batch = dict[str, jax.Array]
# Metric names -> the scorer of decoded generations against references that returns them; a task
# whose metrics include all names of one entry is scored on generations.
GENERATION_SCORERS = {text_metrics.METRIC_NAMES: text_metrics.generation_metrics,
                      math_answers.METRIC_NAMES: math_answers.answer_metrics}


def generation_scorer(spec):
  """The `GENERATION_SCORERS` entry for `spec`'s metrics, or None (perplexity only)."""
  return next((scorer for names, scorer in GENERATION_SCORERS.items()
               if set(names) <= set(spec.metric_names)), None)


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


def sample_call() -> tuple[tuple[jax.Array, ...], dict[str, Any]]:
  """A decoder's call `(ids, mask)` on a [2, 16] batch, for the shapes of a splice."""
  sample = sample_ids()  # [batch, seq]
  return (sample, sample), {'deterministic': True}


def model_inputs(batch: Batch) -> tuple[jax.Array, ...]:
  """The decoder's positional arguments on a batch of rows: `(ids, mask, positions)`; the loss
  and evaluation also pass `segment_ids=batch['segment_ids']` (packed rows)."""
  return batch['input_ids'], batch['attention_mask'], batch['positions']


def decode_text(tokenizer, tokens: np.ndarray) -> str:
  """Generated ids (up to and with EOS) -> text, special tokens dropped."""
  return tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True).strip()


def generation_settings(lm, tokenizer, model_config) -> GenerationConfig | BeamSearchConfig:
  """How a run generates, from its `config.lm`: beam search when `lm.num_beams` > 1 (with its
  length penalty and no-repeat n-gram size), else greedy; `lm.max_new_tokens` tokens at most;
  stops at the tokenizer's end token (`eos_id`) or any of the model's EOS ids.

  Raises:
    ValueError: a length penalty or no-repeat size without beams (they only shape beam search).
  """
  eos = (eos_id(tokenizer),) + tuple(i for i in model_config.eos_token_ids
                                     if i != eos_id(tokenizer))
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
  if lm.num_beams > 1:
    return BeamSearchConfig(
        num_beams=lm.num_beams, max_new_tokens=lm.max_new_tokens,
        length_penalty=float(lm.length_penalty), no_repeat_ngram_size=lm.no_repeat_ngram_size,
        eos_token_ids=eos, pad_token_id=int(pad))
  if lm.length_penalty != 1.0 or lm.no_repeat_ngram_size:
    raise ValueError('lm.length_penalty and lm.no_repeat_ngram_size shape beam search; '
                     'set --config.lm.num_beams > 1, or leave them at 1.0 and 0.')
  return GenerationConfig(max_new_tokens=lm.max_new_tokens, eos_token_ids=eos,
                          pad_token_id=int(pad))


def generate_from_prompts(forward, model_config, params, prompt_ids: jax.Array,
                          prompt_mask: jax.Array,
                          generation: GenerationConfig | BeamSearchConfig) -> GenerationOutput:
  """Greedy or beam-search generation (per `generation`) after left-padded prompts, with the
  cached `decode` of the model `forward` runs (adapters active); call it inside a jit.

  Args:
    forward: `(params, *args, method=..., **kwargs) -> outputs`, the spliced model's call.
    prompt_ids, prompt_mask: `[B, P]` int32, left-padded.

  Returns:
    GenerationOutput(tokens [B, max_new_tokens], lengths [B]).
  """
  def decode(p, ids, mask, cache):
    return forward(p, ids, mask, cache, method='decode', last_only=True)

  search = beam_search_traced if isinstance(generation, BeamSearchConfig) else generate_traced
  return search(decode, model_config, params, prompt_ids, prompt_mask, generation)


@dataclasses.dataclass(frozen=True)
class CausalLM:
  """The task kind (`task_kinds.protocol.TaskKind`) of decoder-only language modelling.

  Attributes:
    spec: the task; generation runs when `generation_scorer(spec)` has a scorer.
    tokenizer: tokenises records (`encode`) and decodes generations (`metrics`).
    model_config: the decoder's `DecoderConfig` (cache shapes for generation).
    label_smoothing: of the training loss (evaluation NLL never smooths).
    pack: several examples per row (`data.lm_packing`); perplexity-only tasks.
    generation: for generation tasks, greedy settings (`GenerationConfig`) or beam search
      (`BeamSearchConfig`, `config.lm.num_beams` > 1); None otherwise.
    references: per encoded example (all splits, `example_index` order), its reference texts;
      filled by `encode`.
  """

  spec: Any
  tokenizer: Any
  model_config: Any
  label_smoothing: float = 0.0
  pack: bool = False
  generation: GenerationConfig | BeamSearchConfig | None = None
  references: list[tuple[str, ...]] = dataclasses.field(default_factory=list, compare=False)

  @classmethod
  def load_arguments(cls, spec) -> dict[str, Any]:
    return {'head': 'causal_lm'}

  @classmethod
  def create(cls, spec, pretrained, config) -> CausalLM:
    """The kind for `spec` on the loaded decoder, from `config.lm` (label smoothing, packing,
    generation: length, beams, length penalty, no-repeat n-grams)."""
    generates = generation_scorer(spec) is not None
    if generates and config.lm.pack:
      raise ValueError(f'Task {spec.name!r} is scored on generations, which run one example per '
                       'row; set --config.lm.pack=False.')
    tokenizer = pretrained.tokenizer
    generation = generation_settings(config.lm, tokenizer, pretrained.config) if generates else None
    return cls(spec=spec, tokenizer=tokenizer, model_config=pretrained.config,
               label_smoothing=float(config.lm.label_smoothing), pack=bool(config.lm.pack),
               generation=generation)

  def sample_call(self):
    return sample_call()

  def model_inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    return model_inputs(batch)

  def encode(self, records: Sequence[LMRecord], tokenizer, max_length: int) -> LMDataset:
    """A split's `LMRecord`s as rows (packed when `pack`); their references are kept."""
    examples = tokenize_records(records, tokenizer, max_length)
    first = len(self.references)
    self.references.extend(e.references for e in examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)
    return LMDataset.build(examples, max_length, pack=self.pack, pad_id=int(pad),
                           prompts=self.generation is not None, first_index=first)

  def loss(self, forward, params, batch: Batch, rng: jax.Array) -> jax.Array:
    logits = forward(params, *model_inputs(batch), segment_ids=batch['segment_ids'],
                     rng=rng)  # [B, L, V]
    weights = batch['weights'] * batch['example_mask'][:, None]
    return lm_loss(logits, batch['targets'], weights, self.label_smoothing)

  def eval_outputs(self, forward, params, batch: Batch) -> dict[str, jax.Array]:
    logits = forward(params, *model_inputs(batch), segment_ids=batch['segment_ids'])
    nll, count = row_nll(logits, batch['targets'], batch['weights'])
    outputs = {'nll_sum': nll, 'target_tokens': count}
    if self.generation is not None:
      generated = generate_from_prompts(forward, self.model_config, params, batch['prompt_ids'],
                                        batch['prompt_mask'], self.generation)
      outputs.update(generated=generated.tokens, generated_length=generated.lengths,
                     example_index=batch['example_index'])
    return outputs

  def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    metrics = perplexity_metrics(outputs['nll_sum'], outputs['target_tokens'])
    if self.generation is None:
      return metrics
    predictions = [decode_text(self.tokenizer, tokens[:length]) for tokens, length
                   in zip(outputs['generated'], outputs['generated_length'], strict=True)]
    references = [list(self.references[i]) for i in outputs['example_index']]
    if getattr(self.tokenizer, 'do_lower_case', False):
      # An uncased vocabulary cannot write capitals: compare in lower case.
      references = [[r.lower() for r in refs] for refs in references]
    return {**metrics, **generation_scorer(self.spec)(predictions, references)}

  def for_prediction(self, config: ml_collections.ConfigDict,
                     max_new_tokens: int | None) -> CausalLM:
    """The kind generating as the run's `config.lm` says (any task, perplexity-only ones too);
    `max_new_tokens` (None: `config.lm.max_new_tokens`) caps the generated tokens."""
    settings = generation_settings(config.lm, self.tokenizer, self.model_config)
    if max_new_tokens is not None:
      settings = dataclasses.replace(settings, max_new_tokens=int(max_new_tokens))
    return dataclasses.replace(self, generation=settings, references=[])

  def prediction_inputs(self, texts: Sequence[Text], tokenizer, max_length: int) -> LMDataset:
    """Prompts (`task_kinds.inputs.prompt_record`) tokenised as training tokenised them, one per
    row, left-padded as evaluation pads them (`prompt_ids`, `prompt_mask` [B, P])."""
    examples = tokenize_records(prompt_records(texts, self.spec.name), tokenizer, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)
    return LMDataset.build(examples, max_length, pack=False, pad_id=int(pad), prompts=True)

  def prediction_outputs(self, forward, params, batch: Batch) -> dict[str, jax.Array]:
    """`generated` [B, max_new_tokens] token ids and `generated_length` [B] (EOS included)."""
    if self.generation is None:
      raise ValueError('This causal-LM kind has no generation settings; call for_prediction().')
    generated = generate_from_prompts(forward, self.model_config, params, batch['prompt_ids'],
                                      batch['prompt_mask'], self.generation)
    return {'generated': generated.tokens, 'generated_length': generated.lengths}

  def present(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per example: `generated`, the text generated up to EOS (special tokens dropped)."""
    return [{'generated': decode_text(self.tokenizer, tokens[:length])} for tokens, length
            in zip(outputs['generated'], outputs['generated_length'], strict=True)]

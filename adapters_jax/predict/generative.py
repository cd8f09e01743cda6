"""Prediction by generation: a trained T5 (seq2seq) or decoder (causal LM) run answers texts the way
its evaluation generated answers.

  * `Seq2SeqPredictor`: each input is written as training wrote the task's inputs
    (`data.text_to_text.source_text`: the task's prefix and field names; pair tasks take
    `(text_a, text_b)`), cut at the run's `max_length`, and decoded by the evaluation step itself
    (`Seq2Seq.eval_outputs`: jitted greedy decoding with the key/value cache, as many tokens as the
    longest label word). The answer is parsed back as evaluation parses it
    (`text_to_text.parse_label`): a label name for classification, the score (a float) for
    regression (STS-B); an answer that names no label gives `label` None and `unparseable` True.
  * `CausalLMPredictor`: each input is a prompt, tokenised as training tokenised prompts
    (`data.lm_jsonl.tokenize_record`): for `e2e_nlg` an MR (`name[The Eagle], food[French]`)
    rendered as the E2E prompt (`name : The Eagle | food : French ||`); otherwise the prompt text
    of a prompt/completion record (the tokenizer's BOS first), or a JSON object
    `{"prompt": ...}` / `{"messages": [...]}` (a chat whose assistant turn the model writes, through
    the tokenizer's chat template or the plain fallback). Generation uses the run's own settings
    (`config.lm`: greedy, or beam search with its length penalty and no-repeat n-gram size;
    `train.causal_lm.generation_settings`) through the evaluation's generation
    (`train.causal_lm.generate_from_prompts`); it stops at EOS or after `max_new_tokens`.

Example:
  predictor = Seq2SeqPredictor(experiment, params)        # experiment.task_kind is a Seq2Seq
  predictor.predict(['A quiet, devastating film.'])
  # [{'generated': 'fresh', 'label': 'fresh'}]
  CausalLMPredictor(experiment, params, max_new_tokens=20).predict(['name[The Eagle]'])
  # [{'generated': 'The Eagle is a ...'}]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from adapters_jax import data
from adapters_jax.data import e2e, text_to_text
from adapters_jax.data.lm_dataset import LMDataset
from adapters_jax.data.lm_jsonl import LMExample, LMRecord, eos_id, parse_record, tokenize_record
from adapters_jax.task_kinds.causal_lm import (
    decode_text,
    generate_from_prompts,
    generation_settings,
)

# The completion a prompt is tokenised with: it only marks where the prompt ends (never generated
# from, never shown to the model).
PLACEHOLDER_COMPLETION = ' .'


@dataclasses.dataclass
class Seq2SeqPredictor:
  """A T5 run's best leaves answering texts; see the module docstring.

  Attributes:
    experiment: the built run (its `task_kind` a `train.seq2seq.Seq2Seq`).
    params: the full params with the best trained leaves.
    batch_size: inputs per decoding call.
  """

  experiment: Any
  params: dict[str, Any]
  batch_size: int = 64

  def __post_init__(self):
    kind = self.experiment.task_kind
    self._generate = jax.jit(lambda params, batch: kind.eval_outputs(self.experiment.forward,
                                                                     params, batch))

  def predict(self, texts: Sequence[str | tuple[str, str]]) -> list[dict[str, Any]]:
    """Answers each text (a `(text_a, text_b)` pair for pair tasks).

    Returns:
      Per input: `generated` (the decoded answer) and `label` (a label name, or the score for
      regression; None when the answer names none, then also `unparseable`: True).
    """
    spec, kind = self.experiment.spec, self.experiment.task_kind
    examples = [data.Example(text_a=a, text_b=b, label=data.NO_LABEL, idx=i)
                for i, (a, b) in enumerate(input_pairs(texts, spec))]
    if not examples:
      return []
    encoded = kind.encode(examples, kind.tokenizer, self.experiment.config.max_length)
    tokens = []
    for batch in data.eval_batches(encoded, self.batch_size):
      outputs = self._generate(self.params, batch)
      tokens.append(np.asarray(outputs['tokens'])[batch['example_mask'] > 0])  # [b, T]
    return [answer_fields(spec, answer) for answer in kind.decode(np.concatenate(tokens))]


def answer_fields(spec: data.TaskSpec, answer: str) -> dict[str, Any]:
  """A T5 answer as output: `generated`, and `label` parsed back as evaluation parses it (the
  label's name; regression: the score); None, with `unparseable` True, when it names none."""
  parsed = text_to_text.parse_label(spec, answer)
  if parsed is None:
    return {'generated': answer, 'label': None, 'unparseable': True}
  return {'generated': answer,
          'label': float(parsed) if spec.is_regression else spec.label_names[parsed]}


def input_pairs(texts: Sequence[str | tuple[str, str]],
                spec: data.TaskSpec) -> list[tuple[str, str | None]]:
  """Each input as `(text_a, text_b)` (`text_b` None for one-text tasks), checked against `spec`.

  Raises:
    ValueError: an input of the other arity, naming its number and what the task takes.
  """
  pairs = []
  for i, text in enumerate(texts):
    pair = (text, None) if isinstance(text, str) else tuple(text)
    if (pair[1] is not None) != spec.is_pair:
      raise ValueError(f'Input {i + 1}: task {spec.name!r} takes '
                       f'{"text pairs (two tab-separated texts)" if spec.is_pair else "one text"}.')
    pairs.append(pair)
  return pairs


def prompt_record(text: str, task_name: str, where: str = '') -> LMRecord:
  """The record whose prompt ids are those of input `text` (see the module docstring); its
  completion is `PLACEHOLDER_COMPLETION`.

  Raises:
    e2e.E2EFormatError: an `e2e_nlg` input that is no MR.
    lm_jsonl.LMRecordError: a JSON input that is no prompt or chat record, or a chat whose last
      turn is the assistant's.
  """
  if task_name == 'e2e_nlg':
    return LMRecord(prompt=e2e.render_mr(text, where) + e2e.PROMPT_END,  # as `e2e.prompt_of`
                    completion=PLACEHOLDER_COMPLETION)
  if not text.lstrip().startswith('{'):
    return LMRecord(prompt=text, completion=PLACEHOLDER_COMPLETION)
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{where}starts with "{{" but is not valid JSON ({e.msg} at column '
                     f'{e.colno}); write {{"prompt": ...}} or {{"messages": [...]}}.') from None
  if isinstance(obj, dict) and 'messages' in obj and isinstance(obj['messages'], list):
    messages = obj['messages']
    if messages and isinstance(messages[-1], dict) and messages[-1].get('role') == 'assistant':
      raise ValueError(f'{where}the chat ends with an assistant turn; end it with the turn the '
                       'model answers (the model writes the assistant turn).')
    obj = {**obj, 'messages': messages + [{'role': 'assistant',
                                           'content': PLACEHOLDER_COMPLETION}]}
  elif isinstance(obj, dict) and set(obj) == {'prompt'}:
    obj = {'prompt': obj['prompt'], 'completion': PLACEHOLDER_COMPLETION}
  else:
    raise ValueError(f'{where}a JSON input is {{"prompt": "..."}} or {{"messages": [...]}}, got '
                     f'{text[:60]!r}.')
  return parse_record(obj, where.rstrip(': '))


@dataclasses.dataclass
class CausalLMPredictor:
  """A decoder run's best leaves continuing prompts; see the module docstring.

  Attributes:
    experiment: the built run (its `task_kind` a `train.causal_lm.CausalLM`).
    params: the full params with the best trained leaves.
    batch_size: prompts per generation call.
    max_new_tokens: tokens generated per prompt at most; None = the run's `config.lm`.
  """

  experiment: Any
  params: dict[str, Any]
  batch_size: int = 64
  max_new_tokens: int | None = None

  def __post_init__(self):
    kind, config = self.experiment.task_kind, self.experiment.config
    settings = generation_settings(config.lm, kind.tokenizer, kind.model_config)
    if self.max_new_tokens is not None:
      settings = dataclasses.replace(settings, max_new_tokens=int(self.max_new_tokens))
    self.generation = settings

    def generate(params, prompt_ids, prompt_mask):
      return generate_from_prompts(self.experiment.forward, kind.model_config, params, prompt_ids,
                                   prompt_mask, settings)

    self._generate = jax.jit(generate)

  def examples(self, texts: Sequence[str]) -> list[LMExample]:
    """Per input, the tokenised record whose `prompt_ids` (int32 `[prompt_length]`) generation
    starts from: the ids training gave the same prompt."""
    tokenizer = self.experiment.task_kind.tokenizer
    spec, max_length = self.experiment.spec, self.experiment.config.max_length
    examples = []
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise ValueError(f'Input {i + 1}: a language-model run takes one prompt per line (no tab-'
                         'separated pairs).')
      record = prompt_record(text, spec.name, where=f'Input {i + 1}: ')
      examples.append(tokenize_record(record, tokenizer, max_length))
    return examples

  def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Continues each prompt.

    Returns:
      Per input: `generated`, the text generated up to EOS (special tokens dropped).
    """
    tokenizer = self.experiment.task_kind.tokenizer
    examples = self.examples(texts)
    if not examples:
      return []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)
    dataset = LMDataset.build(examples, self.experiment.config.max_length, pack=False,
                              pad_id=int(pad), prompts=True)  # prompts left-padded, as evaluation
    results = []
    for batch in data.eval_batches(dataset, self.batch_size):
      out = self._generate(self.params, batch['prompt_ids'], batch['prompt_mask'])
      real = batch['example_mask'] > 0
      for tokens, length in zip(np.asarray(out.tokens)[real], np.asarray(out.lengths)[real],
                                strict=True):
        results.append({'generated': decode_text(tokenizer, tokens[:length])})
    return results

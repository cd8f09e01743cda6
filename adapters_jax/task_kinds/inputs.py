"""What a user's input becomes before a task kind encodes it for prediction.

  * Encoder and T5 kinds take texts, or `(text_a, text_b)` pairs for pair tasks (`input_pairs`),
    as unlabelled `data.Example`s (`unlabelled_examples`).
  * The causal-LM kind takes prompts (`prompt_record`), tokenised as training tokenised prompts
    (`data.lm_jsonl.tokenize_record`): for `e2e_nlg` an MR (`name[The Eagle], food[French]`)
    rendered as the E2E prompt (`name : The Eagle | food : French ||`); for `metamathqa` a
    question in PEFT's template (`Question: ... Think step by step.\nAnswer:`); otherwise the prompt text
    of a prompt/completion record, or a JSON object `{"prompt": ...}` / `{"messages": [...]}` (a
    chat whose assistant turn the model writes, through the tokenizer's chat template or the plain
    fallback).

Example:
  unlabelled_examples(['A triumph.'], spec)        # [Example(text_a='A triumph.', ...)]
  prompt_record('name[The Eagle]', 'e2e_nlg')      # LMRecord(prompt='name : The Eagle ||', ...)
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from adapters_jax import data
from adapters_jax.data import e2e, metamathqa
from adapters_jax.data.lm_jsonl import LMRecord, parse_record

# The completion a prompt is tokenised with: it only marks where the prompt ends (never generated
# from, never shown to the model).
PLACEHOLDER_COMPLETION = ' .'

Text = str | tuple[str, str]  # one input: a text, or a pair for pair tasks


def input_pairs(texts: Sequence[Text], spec: data.TaskSpec) -> list[tuple[str, str | None]]:
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


def unlabelled_examples(texts: Sequence[Text], spec: data.TaskSpec) -> list[data.Example]:
  """The inputs as `data.Example`s with `label` `data.NO_LABEL`, `idx` their position."""
  return [data.Example(text_a=a, text_b=b, label=data.NO_LABEL, idx=i)
          for i, (a, b) in enumerate(input_pairs(texts, spec))]


def prompt_record(text: str, task_name: str, where: str = '') -> LMRecord:
  """The record whose prompt ids are those of input `text` (see the module docstring); its
  completion is `PLACEHOLDER_COMPLETION`. `where` prefixes every error (`'Input 2: '`).

  Raises:
    e2e.E2EFormatError: an `e2e_nlg` input that is no MR.
    ValueError: a JSON input that is no prompt or chat record, or a chat whose last turn is the
      assistant's.
  """
  if task_name == 'e2e_nlg':
    return LMRecord(prompt=e2e.render_mr(text, where) + e2e.PROMPT_END,  # as `e2e.prompt_of`
                    completion=PLACEHOLDER_COMPLETION)
  if task_name == 'metamathqa':
    return LMRecord(prompt=metamathqa.QUERY_TEMPLATE.format(query=text),
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


def prompt_records(texts: Sequence[Text], task_name: str) -> list[LMRecord]:
  """`prompt_record` of each input, numbered in the errors.

  Raises:
    ValueError: a pair (a language-model run takes one prompt per line), or an unreadable prompt.
  """
  records = []
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f'Input {i + 1}: a language-model run takes one prompt per line (no tab-'
                       'separated pairs).')
    records.append(prompt_record(text, task_name, where=f'Input {i + 1}: '))
  return records

"""Language-model examples from local JSONL: prompt/completion or chat records, tokenised with a
mask that keeps the prompt (and every non-assistant turn) out of the loss.

Two record shapes, one per line:

    {"prompt": "name : Aromi | Type : pub ||", "completion": " Aromi is a pub."}
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}

A record may also carry `"references": [...]`: the texts a generated completion is scored
against (E2E has several per input); by default the completion (or the last assistant turn).

Tokenisation (`tokenize_record`): every piece of text is tokenised on its own without special
tokens and the ids are concatenated, so the prompt ids a generation starts from are exactly the
ids the model saw in training.
  * prompt/completion: `[bos] prompt | completion [eos]`; targets are the completion and EOS.
    `bos` is the tokenizer's BOS token when it has one; EOS is its EOS token, else its SEP token
    (BERT-style vocabularies), else an error.
  * chat, tokenizer with a chat template (`tokenizer.chat_template`): turn i is the text the
    template adds between rendering `messages[:i]` and `messages[:i + 1]`; an assistant turn's
    header is the text `add_generation_prompt=True` adds (a prompt, masked) and the rest of the
    turn, the template's end-of-turn token included, is the target. Templates that rewrite
    earlier turns when a later one is added are refused with an error.
  * chat, tokenizer without a template: the plain fallback `CHAT_FALLBACK`: each non-assistant
    turn is `"{role}: {content}\\n"`, each assistant turn is the header `"assistant: "` (masked)
    then `content` and EOS (targets).

Example:
  records = read_lm_jsonl('train.jsonl')
  examples = [tokenize_record(r, tokenizer, max_length=512) for r in records]
  examples[0].input_ids, examples[0].target_mask   # int32 [len], bool [len]
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

ROLES = ('system', 'user', 'assistant', 'tool')
CHAT_FALLBACK = '{role}: {content}\n'  # non-assistant turns without a chat template
ASSISTANT_FALLBACK_HEADER = 'assistant: '


class LMRecordError(ValueError):
  """A JSONL record that is not a valid prompt/completion or chat record (names file and line)."""


@dataclasses.dataclass(frozen=True)
class LMRecord:
  """One training example before tokenisation: prompt/completion or chat (exactly one of them).

  Attributes:
    prompt, completion: the texts of a prompt/completion record ('' for chat).
    messages: `((role, content), ...)` of a chat record (empty for prompt/completion).
    references: texts a generation for this prompt is scored against.
  """

  prompt: str = ''
  completion: str = ''
  messages: tuple[tuple[str, str], ...] = ()
  references: tuple[str, ...] = ()

  @property
  def is_chat(self) -> bool:
    return bool(self.messages)


@dataclasses.dataclass(frozen=True)
class LMExample:
  """A tokenised record.

  Attributes:
    input_ids: int32 `[length]`, the whole sequence.
    target_mask: bool `[length]`, True on tokens the model learns to predict (completion, EOS,
      assistant turns); the loss reads it one position later (token t+1 is predicted at t).
    prompt_ids: int32 `[prompt_length]`, what a generation starts from: everything before the
      completion (before the last assistant turn, its header included, for chat).
    references: the texts a generation is scored against.
  """

  input_ids: np.ndarray
  target_mask: np.ndarray
  prompt_ids: np.ndarray
  references: tuple[str, ...]


def parse_record(obj: Any, where: str) -> LMRecord:
  """An `LMRecord` from one decoded JSON value; `where` (`file:line`) goes into every error."""
  if not isinstance(obj, dict):
    raise LMRecordError(f'{where}: expected a JSON object, got {type(obj).__name__}.')
  keys = set(obj)
  references = obj.get('references', [])
  if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
    raise LMRecordError(f'{where}: "references" must be a list of strings.')
  if 'messages' in keys:
    extra = keys - {'messages', 'references'}
    if extra:
      raise LMRecordError(f'{where}: a chat record has "messages" (and optional "references") '
                          f'only; unexpected {sorted(extra)}.')
    messages = _parse_messages(obj['messages'], where)
    default = tuple(c for r, c in messages if r == 'assistant')[-1:]
    return LMRecord(messages=messages, references=tuple(references) or default)
  missing = {'prompt', 'completion'} - keys
  if missing:
    raise LMRecordError(f'{where}: missing {sorted(missing)}; a record is {{"prompt": ..., '
                        f'"completion": ...}} or {{"messages": [...]}} (keys found: '
                        f'{sorted(keys)}).')
  extra = keys - {'prompt', 'completion', 'references'}
  if extra:
    raise LMRecordError(f'{where}: unexpected keys {sorted(extra)}; valid: prompt, completion, '
                        'references.')
  for key in ('prompt', 'completion'):
    if not isinstance(obj[key], str):
      raise LMRecordError(f'{where}: "{key}" must be a string, got {type(obj[key]).__name__}.')
  if not obj['completion']:
    raise LMRecordError(f'{where}: "completion" is empty; there is nothing to learn.')
  return LMRecord(prompt=obj['prompt'], completion=obj['completion'],
                  references=tuple(references) or (obj['completion'].strip(),))


def _parse_messages(messages: Any, where: str) -> tuple[tuple[str, str], ...]:
  if not isinstance(messages, list) or not messages:
    raise LMRecordError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}}.')
  parsed = []
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or set(message) != {'role', 'content'}:
      raise LMRecordError(f'{where}: messages[{i}] must be {{"role": ..., "content": ...}}, got '
                          f'{message!r}.')
    role, content = message['role'], message['content']
    if role not in ROLES:
      raise LMRecordError(f'{where}: messages[{i}] has role {role!r}; valid roles: {list(ROLES)}.')
    if not isinstance(content, str):
      raise LMRecordError(f'{where}: messages[{i}].content must be a string.')
    parsed.append((role, content))
  if not any(r == 'assistant' for r, _ in parsed):
    raise LMRecordError(f'{where}: no assistant turn; there is nothing to learn.')
  return tuple(parsed)


def read_lm_jsonl(path: str | os.PathLike) -> list[LMRecord]:
  """The records of a JSONL file (blank lines skipped).

  Raises:
    LMRecordError: a line that is not JSON or not a valid record, as `path:line: reason`.
  """
  records = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f'{path}:{number}'
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise LMRecordError(f'{where}: not valid JSON ({e.msg} at column {e.colno}).') from None
      records.append(parse_record(obj, where))
  if not records:
    raise LMRecordError(f'{path}: no records.')
  return records


def eos_id(tokenizer) -> int:
  """The id that ends a completion: EOS, else SEP (BERT-style vocabularies)."""
  for token_id in (tokenizer.eos_token_id, getattr(tokenizer, 'sep_token_id', None)):
    if token_id is not None:
      return int(token_id)
  raise ValueError('The tokenizer has neither an EOS nor a SEP token; completions need an end '
                   'token. Set tokenizer.eos_token before encoding.')


def _ids(tokenizer, text: str) -> list[int]:
  return list(tokenizer(text, add_special_tokens=False)['input_ids']) if text else []


def _pieces(record: LMRecord, tokenizer) -> list[tuple[list[int], bool]]:
  """`(ids, is_target)` pieces in order; the last target piece is the generation's answer."""
  if not record.is_chat:
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    return [(bos + _ids(tokenizer, record.prompt), False),
            (_ids(tokenizer, record.completion) + [eos_id(tokenizer)], True)]
  if getattr(tokenizer, 'chat_template', None):
    return _template_pieces(record.messages, tokenizer)
  pieces = []
  for role, content in record.messages:
    if role == 'assistant':
      pieces += [(_ids(tokenizer, ASSISTANT_FALLBACK_HEADER), False),
                 (_ids(tokenizer, content) + [eos_id(tokenizer)], True)]
    else:
      pieces.append((_ids(tokenizer, CHAT_FALLBACK.format(role=role, content=content)), False))
  return pieces


def _template_pieces(messages, tokenizer) -> list[tuple[list[int], bool]]:
  def render(turns, generation_prompt=False) -> str:
    return tokenizer.apply_chat_template([{'role': r, 'content': c} for r, c in turns],
                                         tokenize=False, add_generation_prompt=generation_prompt)

  pieces, done = [], ''
  for i, (role, _) in enumerate(messages):
    full = render(messages[:i + 1])
    if role == 'assistant':
      header = render(messages[:i], generation_prompt=True) if i else ''
      if i and not header.startswith(done):
        raise ValueError('The chat template rewrites earlier turns when a generation prompt is '
                         'added; it cannot be masked turn by turn.')
      header = header or done
      pieces.append((_ids(tokenizer, header[len(done):]), False))
      done = header
    if not full.startswith(done):
      raise ValueError(f'The chat template rewrites earlier turns when turn {i} ({role}) is added; '
                       'it cannot be masked turn by turn.')
    pieces.append((_ids(tokenizer, full[len(done):]), role == 'assistant'))
    done = full
  return pieces


def tokenize_record(record: LMRecord, tokenizer, max_length: int) -> LMExample:
  """Token ids and target mask of `record`, at most `max_length` tokens.

  Too long a prompt/completion record loses the beginning of its prompt first (its last tokens
  are kept; the prompt keeps at least half the row, or all of itself if shorter), then the end of
  its completion, so a long input still trains on its completion. A chat record is cut at the
  end. The prompt ids (what generation starts from) are everything before the last target piece
  (for chat: before the last assistant turn's content), at most `max_length - 1` tokens (the last
  ones).
  """
  pieces = _pieces(record, tokenizer)
  if not record.is_chat:
    (prompt, _), (completion, _) = pieces
    if len(prompt) + len(completion) > max_length:
      keep = max(max_length - len(completion), min(len(prompt), max_length // 2))
      prompt = prompt[len(prompt) - keep:]
      pieces = [(prompt, False), (completion[:max_length - len(prompt)], True)]
  ids = [i for piece, _ in pieces for i in piece]
  mask = [target for piece, target in pieces for _ in piece]
  last = max(k for k, (_, target) in enumerate(pieces) if target)
  prompt_ids = [i for piece, _ in pieces[:last] for i in piece][-(max_length - 1):]
  return LMExample(input_ids=np.asarray(ids[:max_length], np.int32),
                   target_mask=np.asarray(mask[:max_length], bool),
                   prompt_ids=np.asarray(prompt_ids, np.int32), references=record.references)


def tokenize_records(records: Sequence[LMRecord], tokenizer, max_length: int) -> list[LMExample]:
  """`tokenize_record` over `records`."""
  if max_length < 2:
    raise ValueError(f'max_length={max_length}: a language-model example needs at least 2 tokens.')
  return [tokenize_record(r, tokenizer, max_length) for r in records]

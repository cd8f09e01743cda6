"""Language-model records: prompt masking (prompt/completion, chat with and without a template),
EOS, errors that name the file and line, and packing into rows."""

import json

import numpy as np
import pytest

from adapters_jax.data.lm_jsonl import (
  LMRecordError,
  read_lm_jsonl,
  tokenize_record,
  tokenize_records,
)
from adapters_jax.data.lm_packing import pack_rows, rows_batch, single_rows

# A ChatML-style template (what Qwen2 ships), set on the real MiniLM tokenizer.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _write(tmp_path, lines, name='data.jsonl'):
  path = tmp_path / name
  path.write_text(''.join((line if isinstance(line, str) else json.dumps(line)) + '\n'
                          for line in lines))
  return path


def _words(tokenizer, ids):
  return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def test_prompt_completion_masks_the_prompt_and_appends_eos(tmp_path, tokenizer):
  # Bug caught: the prompt counted in the loss, or no end token to learn to stop.
  path = _write(tmp_path, [{'prompt': 'name : aromi ||', 'completion': ' aromi is a pub'}])
  example = tokenize_record(read_lm_jsonl(path)[0], tokenizer, max_length=64)
  words = _words(tokenizer, example.input_ids)
  assert words == ['name', ':', 'ar', '##omi', '|', '|', 'ar', '##omi', 'is', 'a', 'pub', '[SEP]']
  targets = [w for w, t in zip(words, example.target_mask, strict=True) if t]
  assert targets == ['ar', '##omi', 'is', 'a', 'pub', '[SEP]']  # BERT vocab: SEP ends it
  assert _words(tokenizer, example.prompt_ids) == words[:6]
  assert example.references == ('aromi is a pub',)


def test_chat_fallback_masks_every_non_assistant_turn(tmp_path, tokenizer):
  # Bug caught: user turns or the assistant header learnt; only the last assistant turn learnt.
  assert not tokenizer.chat_template
  record = {'messages': [{'role': 'user', 'content': 'hi'},
                         {'role': 'assistant', 'content': 'hello'},
                         {'role': 'user', 'content': 'bye'},
                         {'role': 'assistant', 'content': 'see you'}]}
  example = tokenize_record(read_lm_jsonl(_write(tmp_path, [record]))[0], tokenizer, 64)
  words = _words(tokenizer, example.input_ids)
  assert words == ['user', ':', 'hi', 'assistant', ':', 'hello', '[SEP]', 'user', ':', 'bye',
                   'assistant', ':', 'see', 'you', '[SEP]']
  targets = [w for w, t in zip(words, example.target_mask, strict=True) if t]
  assert targets == ['hello', '[SEP]', 'see', 'you', '[SEP]']
  assert _words(tokenizer, example.prompt_ids) == words[:12]  # up to the last header


def test_chat_template_masks_headers_and_other_roles(tmp_path, tokenizer):
  # Bug caught: the template's assistant header or the system/user turns counted as targets.
  tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
  tok.add_special_tokens({'additional_special_tokens': ['<|im_start|>', '<|im_end|>']})
  tok.chat_template = CHATML
  record = {'messages': [{'role': 'system', 'content': 'be brief'},
                         {'role': 'user', 'content': 'hi'},
                         {'role': 'assistant', 'content': 'hello'}]}
  example = tokenize_record(read_lm_jsonl(_write(tmp_path, [record]))[0], tok, 64)
  words = _words(tok, example.input_ids)
  assert words == ['<|im_start|>', 'system', 'be', 'brief', '<|im_end|>',
                   '<|im_start|>', 'user', 'hi', '<|im_end|>',
                   '<|im_start|>', 'assistant', 'hello', '<|im_end|>']
  targets = [w for w, t in zip(words, example.target_mask, strict=True) if t]
  assert targets == ['hello', '<|im_end|>']
  assert _words(tok, example.prompt_ids) == words[:11]


@pytest.mark.parametrize('line,message', [
    ('{"prompt": "a"}', r'data\.jsonl:2: missing \[\'completion\'\]'),
    ('{"prompt": "a", "completion": "b", "label": 1}', r"data\.jsonl:2: unexpected keys \['label'\]"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', r"data\.jsonl:2: .*role 'robot'; valid"),
    ('{"messages": [{"role": "user", "content": "x"}]}', r'data\.jsonl:2: no assistant turn'),
    ('not json', r'data\.jsonl:2: not valid JSON'),
])
def test_bad_record_names_file_and_line(tmp_path, line, message):
  # Bug caught: a bad line accepted silently, or an error that does not say where.
  path = _write(tmp_path, [{'prompt': 'ok', 'completion': 'fine'}, line])
  with pytest.raises(LMRecordError, match=message):
    read_lm_jsonl(path)


def test_max_length_cuts_the_prompt_first_so_the_completion_still_trains(tmp_path, tokenizer):
  # Bug caught: an over-long example kept whole (rows overflow), or a long prompt leaving no
  # completion token to learn (a split without targets has no perplexity).
  path = _write(tmp_path, [{'prompt': 'one two three four five six', 'completion': ' seven'},
                           {'prompt': 'one', 'completion': ' two three four five six seven'}])
  cut_prompt, cut_completion = tokenize_records(read_lm_jsonl(path), tokenizer, max_length=4)
  assert _words(tokenizer, cut_prompt.input_ids) == ['five', 'six', 'seven', '[SEP]']
  assert cut_prompt.target_mask.tolist() == [False, False, True, True]
  assert _words(tokenizer, cut_prompt.prompt_ids) == ['five', 'six']
  assert _words(tokenizer, cut_completion.input_ids) == ['one', 'two', 'three', 'four']
  assert cut_completion.target_mask.tolist() == [False, True, True, True]


def test_packing_first_fit_and_row_arrays():
  # Bug caught: an example split across rows, positions not restarting per example, or the last
  # token of one example trained to predict the first token of the next.
  plan = pack_rows([3, 4, 2, 5], row_length=6)
  assert plan == [[0, 2], [1], [3]]
  from adapters_jax.data.lm_jsonl import LMExample

  def ex(ids, mask):
    return LMExample(np.asarray(ids, np.int32), np.asarray(mask, bool),
                     np.asarray(ids[:1], np.int32), ())

  examples = [ex([10, 11, 12], [0, 1, 1]), ex([20, 21, 22, 23], [0, 0, 1, 1]),
              ex([30, 31], [0, 1]), ex([40, 41, 42, 43, 44], [0, 0, 0, 1, 1])]
  batch = rows_batch(examples, plan, 6)
  np.testing.assert_array_equal(batch['input_ids'][0], [10, 11, 12, 30, 31, 0])
  np.testing.assert_array_equal(batch['positions'][0], [0, 1, 2, 0, 1, 0])
  np.testing.assert_array_equal(batch['segment_ids'][0], [1, 1, 1, 2, 2, 0])
  np.testing.assert_array_equal(batch['attention_mask'][0], [1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(batch['targets'][0], [11, 12, 0, 31, 0, 0])
  np.testing.assert_array_equal(batch['weights'][0], [1, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(batch['weights'][1], [0, 1, 1, 0, 0, 0])
  assert single_rows(3) == [[0], [1], [2]]
  with pytest.raises(ValueError, match='more than a row of 4'):
    pack_rows([5], row_length=4)

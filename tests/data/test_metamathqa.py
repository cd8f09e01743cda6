"""MetaMathQA/GSM8K as PEFT's method comparison builds it: files in the hub's formats, the
character filter, the template, PEFT's validation questions, and the parsed-answer accuracy
against PEFT's own parsing code (copied below as the reference)."""

from decimal import Decimal, DivisionByZero, InvalidOperation

import numpy as np
import pytest

from adapters_jax.data import load_task, math_answers, metamathqa
from tests.data.metamathqa_files import gsm8k_rows, metamath_rows, write_metamathqa_dir


# --- Reference: huggingface/peft, method_comparison/MetaMathQA/utils.py (Apache-2.0), verbatim
# apart from formatting (and `strict=True` in its zips).
def peft_parse_answer(text):
  candidate_delimiters = ['The answer is: ', 'The answer is ', 'The final answer is: ',
                          'The final answer is ', '#### ']
  text = text.strip()
  text = text.rstrip('.!?')
  for delimiter in candidate_delimiters:
    if delimiter in text:
      break
  else:
    return None
  text = text.rpartition(delimiter)[-1].strip()
  text = text.split('\n', 1)[0]
  text = text.strip(' .!?$%')
  return text


def peft_convert_to_decimal(s):
  if s is None:
    return None
  try:
    s = s.strip()
    if '/' in s:
      parts = s.split('/')
      if len(parts) != 2:
        return None
      numerator = Decimal(parts[0].strip())
      denominator = Decimal(parts[1].strip())
      if denominator == 0:
        return None
      value = numerator / denominator
    else:
      value = Decimal(s)
    return value
  except (DivisionByZero, InvalidOperation, ValueError):
    return None


def peft_get_accuracy(*, predictions, responses):
  y_true, y_pred = [], []
  for prediction, response in zip(predictions, responses, strict=True):
    parsed_prediction = peft_parse_answer(prediction)
    parsed_response = peft_parse_answer(response)
    if parsed_response is None:
      raise ValueError(f'Error encountered while trying to parse response: {response}')
    decimal_prediction = peft_convert_to_decimal(parsed_prediction)
    decimal_answer = peft_convert_to_decimal(parsed_response)
    if decimal_prediction is not None:
      y_pred.append(float(decimal_prediction))
    elif parsed_prediction is not None:
      y_pred.append(parsed_prediction)
    else:
      y_pred.append(None)
    if decimal_answer is not None:
      y_true.append(float(decimal_answer))
    elif parsed_prediction is not None:
      y_true.append(parsed_response)
    else:
      y_true.append(None)
  correct = [(t is not None) and (p is not None) and t == p for t, p in zip(y_true, y_pred, strict=True)]
  return sum(correct) / len(correct)
# --- end of reference


# (generated text, GSM8K reference): right and wrong answers in the shapes generations take.
CASES = [
    ('He has 3 + 2 = 5 apples. The answer is: 5', 'So 5.\n#### 5'),                 # right
    ('The answer is: 5.0', '#### 5'),                                                 # right: 5.0 = 5
    ('So $4^2 = \\boxed{16}$.The answer is: 16', '#### 16'),                          # right
    ('The answer is $18.', 'x\n#### 18'),                                             # right: $ . off
    ('The answer is: 50%', '#### 50'),                                                # right: % off
    ('The answer is: 10/4\n\nQuestion: next one', '#### 2.5'),                        # right: fraction
    ('The final answer is 7!', '#### 7'),                                             # right
    ('The answer is: 1 The answer is: 9', '#### 9'),                                  # right: the last
    ('The answer is: 6', '#### 5'),                                                   # wrong
    ('I think it is 5', '#### 5'),                                                    # wrong: no delimiter
    ('The answer is: five', '#### 5'),                                                # wrong: no number
    ('The answer is: 1/0', '#### 1'),                                                 # wrong: 1/0
    ('The answer is: 1,000', '#### 1,000'),                                           # right: equal strings
    ('The answer is: 1000', '#### 1,000'),                                            # wrong: 1,000 no number
    ('#### 3/4/5', '#### 3/4/5'),                                                     # right: equal strings
]
EXPECTED = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1]


@pytest.mark.parametrize('case, expected', list(zip(CASES, EXPECTED, strict=True)))
def test_each_case_is_scored_as_peft_scores_it_and_as_written_by_hand(case, expected):
  # Bug caught: the first delimiter's first occurrence taken, $/% kept, fractions or 5.0 compared
  # as strings, a missing answer counted right.
  prediction, reference = case
  assert math_answers.accuracy([prediction], [reference]) == expected
  assert peft_get_accuracy(predictions=[prediction], responses=[reference]) == expected
  assert math_answers.parse_answer(prediction) == peft_parse_answer(prediction)
  assert math_answers.to_decimal(math_answers.parse_answer(prediction)) == peft_convert_to_decimal(
      peft_parse_answer(prediction))


def test_accuracy_over_a_batch_and_its_errors():
  predictions, references = zip(*CASES, strict=True)
  assert math_answers.answer_metrics(list(predictions), [[r] for r in references]) == {
      'accuracy': pytest.approx(sum(EXPECTED) / len(EXPECTED))}
  with pytest.raises(ValueError, match='No final answer'):
    math_answers.accuracy(['The answer is: 1'], ['one'])
  with pytest.raises(ValueError, match='2 predictions but 1'):
    math_answers.accuracy(['a', 'b'], ['#### 1'])


def test_validation_questions_are_pefts():
  # PEFT: np.random.seed(0); np.random.shuffle(indices); indices[:50] (global state).
  np.random.seed(0)
  indices = np.arange(7473)
  np.random.shuffle(indices)
  np.testing.assert_array_equal(metamathqa.validation_indices(7473), indices[:50])


def test_splits_read_from_files_in_the_hub_layout(tmp_path):
  # Bug caught: the over-long MetaMathQA row kept, the prompt excluded from the training text, the
  # wrong GSM8K rows validated on, the test answers not carried as references.
  task = load_task('metamathqa', data_dir=write_metamathqa_dir(tmp_path, train=3, gsm8k_train=60,
                                                              gsm8k_test=2))
  rows = metamath_rows(3)
  assert [(r.prompt, r.completion) for r in task['train']] == [
      ('', f"Question: {r['query']} Think step by step.\nAnswer:{r['response']}") for r in rows[:3]]
  valid = [gsm8k_rows(60)[i] for i in metamathqa.validation_indices(60)]
  assert len(task['validation']) == 50
  assert [r.prompt for r in task['validation']] == [
      f"Question: {r['question']} Think step by step.\nAnswer:" for r in valid]
  assert [r.references for r in task['test']] == [(r['answer'],) for r in gsm8k_rows(2, 1000)]
  assert task.spec.primary_metric == 'accuracy'


def test_jsonl_rows_and_a_missing_file(tmp_path):
  path = tmp_path / 'rows.jsonl'
  path.write_text('{"question": "q", "answer": "#### 1"}\n\n')
  assert metamathqa.read_rows(str(path), ('question', 'answer')) == [
      {'question': 'q', 'answer': '#### 1'}]
  with pytest.raises(ValueError, match=r"row 0 has no text in \['answer'\]"):
    path.write_text('{"question": "q"}\n')
    metamathqa.read_rows(str(path), ('question', 'answer'))
  with pytest.raises(ValueError, match='huggingface-cli download meta-math/MetaMathQA'):
    load_task('metamathqa', data_dir=str(tmp_path))


def test_a_prediction_input_is_prompted_as_training_prompted_it():
  from adapters_jax.task_kinds.inputs import prompt_record

  record = prompt_record('What is 2 + 3?', 'metamathqa')
  assert record.prompt == 'Question: What is 2 + 3? Think step by step.\nAnswer:'

"""GSM8K accuracy of generated solutions, parsed as PEFT's MetaMathQA comparison parses them
(`method_comparison/MetaMathQA/utils.py` in huggingface/peft: `parse_answer`,
`convert_to_decimal`, `get_accuracy`).

  * `parse_answer`: the text after the last occurrence of the first delimiter found among
    `DELIMITERS` (MetaMathQA's `The answer is: `, GSM8K's `#### `, ...), up to the end of its line,
    stripped of ` .!?$%`; None when no delimiter occurs;
  * `to_decimal`: `'13'`, `'65.33'` or a fraction `'20/14'` as a Decimal (None otherwise);
  * `accuracy`: a prediction is right when both parse and are equal as floats (or, when the
    reference is no number, as strings).

Example:
  parse_answer('... so she has $4^2 = 16$. The answer is: 16')          # '16'
  answer_metrics(['The answer is: 18'], [['... #### 18']])               # {'accuracy': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, DivisionByZero, InvalidOperation

METRIC_NAMES = ('accuracy',)
DELIMITERS = ('The answer is: ', 'The answer is ', 'The final answer is: ', 'The final answer is ',
              '#### ')


def parse_answer(text: str) -> str | None:
  """The final answer written in `text`, or None."""
  text = text.strip().rstrip('.!?')
  delimiter = next((d for d in DELIMITERS if d in text), None)
  if delimiter is None:
    return None
  answer = text.rpartition(delimiter)[-1].strip().split('\n', 1)[0]
  return answer.strip(' .!?$%')  # GSM8K writes 50% as 50


def to_decimal(answer: str | None) -> Decimal | None:
  """A number or a fraction `a/b` as a Decimal; None for anything else (or a zero denominator)."""
  if answer is None:
    return None
  try:
    parts = answer.strip().split('/')
    if len(parts) > 2:
      return None
    if len(parts) == 2:
      numerator, denominator = Decimal(parts[0].strip()), Decimal(parts[1].strip())
      return None if denominator == 0 else numerator / denominator
    return Decimal(parts[0])
  except (DivisionByZero, InvalidOperation, ValueError):
    return None


def _comparable(answer: str | None) -> float | str | None:
  number = to_decimal(answer)
  return float(number) if number is not None else answer


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Share of `predictions` whose parsed answer equals the parsed reference.

  Raises:
    ValueError: lengths differ, no predictions, or a reference with no parseable answer.
  """
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions but {len(references)} references.')
  if not predictions:
    raise ValueError('No predictions to score.')
  correct = 0
  for prediction, reference in zip(predictions, references, strict=True):
    truth = parse_answer(reference)
    if truth is None:
      raise ValueError(f'No final answer (#### or "The answer is") in reference {reference!r}.')
    guess = parse_answer(prediction)
    correct += guess is not None and _comparable(guess) == _comparable(truth)
  return correct / len(predictions)


def answer_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]
                   ) -> dict[str, float]:
  """`{'accuracy': ...}` against each prediction's first reference (GSM8K has one)."""
  return {'accuracy': accuracy(predictions, [refs[0] for refs in references])}

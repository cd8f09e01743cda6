"""Tasks as text-to-text (T5, Raffel et al. 2020, appendix D): an input string with the task's
prefix and field names, a target string that is the label's word, and the way back.

Input: `<task> <field>: <text> <field>: <text>`, the fields in the order of the task's spec
except MNLI, which T5 writes hypothesis first (`mnli hypothesis: ... premise: ...`). Target: the
label's name (`entailment`, `not_equivalent`, `acceptable`, ...); STS-B's score rounded to the
nearest 0.2 and written with one decimal (`3.8`), as T5's `stsb` preprocessor does. Tasks other
than GLUE (packaged, local files) follow the same rule with their own name, fields and labels.

Parsing a generated string back: classification accepts exactly one of the label words (case and
whitespace are ignored, so a word-piece tokenizer's `not _ entailment` still reads as
`not_entailment`); regression accepts a number. Anything else is unparseable (None).

Example:
  spec = get_task('rte')
  source_text(spec, Example('A man sleeps.', 'A man is awake.', 1, 0))
  # 'rte sentence1: A man sleeps. sentence2: A man is awake.'
  target_text(spec, 1)                   # 'not_entailment'
  parse_label(spec, 'not_entailment')    # 1
  parse_label(spec, 'maybe')             # None
"""

from __future__ import annotations

import math
import re

from adapters_jax.data.task_registry import NO_LABEL, Example, TaskSpec

# Field order in the input where T5 differs from the spec's (model) order.
FIELD_ORDER = {'mnli': ('hypothesis', 'premise')}
STEPS_PER_UNIT = 5  # STS-B targets are rounded to 1/5 = 0.2


def source_text(spec: TaskSpec, example: Example) -> str:
  """The input string of `example`: the task's prefix, then `field: text` per field."""
  texts = dict(zip(spec.text_fields, (example.text_a, example.text_b), strict=False))
  order = FIELD_ORDER.get(spec.name, spec.text_fields)
  return ' '.join([spec.name] + [f'{field}: {texts[field]}' for field in order])


def regression_target(score: float) -> str:
  """STS-B's target: `score` rounded to the nearest 0.2 (halves to even, as `tf.round`), one
  decimal."""
  # T5's own arithmetic, round(x * 5) / 5 (x / 0.2 differs in floating point: 0.7 / 0.2 < 3.5).
  return f'{round(float(score) * STEPS_PER_UNIT) / STEPS_PER_UNIT:.1f}'


def target_text(spec: TaskSpec, label: int | float) -> str:
  """The target string of a label: its name, or the rounded score for regression.

  Raises:
    ValueError: `NO_LABEL` (an unlabelled example has no target) or a class id out of range.
  """
  if spec.is_regression:
    if label == NO_LABEL:
      raise ValueError(f'Task {spec.name!r}: an unlabelled example (label {NO_LABEL}) has no '
                       'target string.')
    return regression_target(label)
  if not 0 <= int(label) < spec.num_labels:
    raise ValueError(f'Task {spec.name!r}: label {label} is not a class id in '
                     f'[0, {spec.num_labels}) (labels: {spec.label_names}).')
  return spec.label_names[int(label)]


def possible_targets(spec: TaskSpec) -> tuple[str, ...]:
  """Every target string of the task (the label words; STS-B: 0.0, 0.2, ..., 5.0)."""
  if spec.is_regression:
    return tuple(regression_target(i / STEPS_PER_UNIT) for i in range(5 * STEPS_PER_UNIT + 1))
  return tuple(spec.label_names)


def _squash(text: str) -> str:
  return re.sub(r'\s+', '', text).lower()


def parse_label(spec: TaskSpec, text: str) -> int | float | None:
  """The label a generated string names: a class id, a float (regression), or None when the
  string is none of the label words (or no finite number)."""
  squashed = _squash(text)
  if spec.is_regression:
    try:
      value = float(squashed)
    except ValueError:
      return None
    return value if math.isfinite(value) else None
  words = [_squash(w) for w in spec.label_names]
  return words.index(squashed) if squashed in words else None

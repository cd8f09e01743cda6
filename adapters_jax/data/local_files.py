"""Local CSV, TSV or JSONL files as a task, described by a `LocalTaskConfig`.

Each split is one file with a header (CSV/TSV) or one JSON object per line (JSONL), holding one or
two text columns and a label column. Split names: 'train', then any names starting with
'validation' (the first, in config order, is used for model selection), then any starting with
'test'.

Bad rows (missing or empty text, unknown label, unparseable or non-finite float, wrong number of
CSV fields, invalid JSON) raise an error naming the file and the line (1-based, the header being
line 1, as a text editor counts). With `drop_bad_rows=True` they are skipped instead; the count per
split is logged and reported in `Task.dropped`. A file that cannot be used at all (missing, not
decodable, no header, a header that lacks a column or names one twice) raises `LocalFileError`.

Formats: '.csv' uses the csv module's default dialect (quotes may wrap commas and newlines);
'.tsv' splits on tabs with no quote handling (as GLUE's TSV files need: their quotes are literal);
'.jsonl'/'.json' reads one object per line, blank lines ignored.

Example:
  config = LocalTaskConfig(
      name='my_nli', paths={'train': 'train.tsv', 'validation': 'dev.tsv'},
      text_columns=('premise', 'hypothesis'), label_column='label',
      label_names=('entailment', 'neutral', 'contradiction'))
  task = load_local_task(config)
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping

from absl import logging

from adapters_jax.data.task_registry import NO_LABEL, Example, Task, TaskSpec

FORMATS = ('csv', 'tsv', 'jsonl')
_EXTENSIONS = {'.csv': 'csv', '.tsv': 'tsv', '.jsonl': 'jsonl', '.json': 'jsonl'}


@dataclasses.dataclass(frozen=True)
class LocalTaskConfig:
  """A task made of local files.

  Attributes:
    name: task name (used in logs, metrics and checkpoints).
    paths: split name -> file path; needs 'train' or at least one split; see the module doc.
    text_columns: one or two column names: segment A and optionally segment B.
    label_column: name of the label column.
    label_names: class names (classification), id = position. Labels in the file may be names
      or integer ids in [0, len(label_names)). None together with regression=True.
    regression: True for a float target (label_names must be None).
    format: one of 'csv', 'tsv', 'jsonl'; None infers it from each file's extension.
    drop_bad_rows: skip bad rows (counting them) instead of raising.
    test_has_labels: False when test files have no label column (their examples get label -1).
    metric_names: metrics to report; None means ('accuracy',) for classification, adding 'f1'
      for two classes, and ('pearson', 'spearman', 'combined_score') for regression.
    primary_metric: model-selection metric; None means the first of metric_names
      ('combined_score' for regression).
    encoding: file encoding (a Python codec name: 'utf-8', 'latin-1', 'cp1252', ...); UTF-8 files
      may start with a byte-order mark. A byte the encoding cannot decode is an error naming the
      file, line and byte offset.
  """

  name: str
  paths: Mapping[str, str]
  text_columns: tuple[str, ...]
  label_column: str = 'label'
  label_names: tuple[str, ...] | None = None
  regression: bool = False
  format: str | None = None
  drop_bad_rows: bool = False
  test_has_labels: bool = True
  metric_names: tuple[str, ...] | None = None
  primary_metric: str | None = None
  encoding: str = 'utf-8'

  def __post_init__(self):
    if self.regression == (self.label_names is not None):
      raise ValueError(f'LocalTaskConfig {self.name!r}: give label_names for classification or '
                       'regression=True (with label_names=None), not both or neither.')
    if self.format is not None and self.format not in FORMATS:
      raise ValueError(f'Unknown format {self.format!r}; valid: {", ".join(FORMATS)} (or None '
                       'to infer from the extension).')
    try:
      codecs.lookup(self.encoding)
    except LookupError:
      raise ValueError(f'Unknown encoding {self.encoding!r} for task {self.name!r}; give a Python '
                       "codec name such as 'utf-8', 'latin-1' or 'cp1252' "
                       '(--config.local_task.encoding=...).') from None
    if isinstance(self.text_columns, str):
      object.__setattr__(self, 'text_columns', (self.text_columns,))
    if len(self.text_columns) not in (1, 2):
      raise ValueError(f'text_columns needs one or two names, got {self.text_columns}.')
    if not self.paths:
      raise ValueError(f'LocalTaskConfig {self.name!r}: paths is empty; give at least '
                       "{'train': ...}.")
    for split in self.paths:
      if not (split == 'train' or split.startswith(('validation', 'test'))):
        raise ValueError(f'Split name {split!r} not understood; use train, validation* or '
                         'test* (e.g. validation_matched).')

  def spec(self) -> TaskSpec:
    """The `TaskSpec` of this task."""
    if self.metric_names is not None:
      metric_names = tuple(self.metric_names)
    elif self.regression:
      metric_names = ('pearson', 'spearman', 'combined_score')
    elif len(self.label_names) == 2:
      metric_names = ('accuracy', 'f1')
    else:
      metric_names = ('accuracy',)
    primary = self.primary_metric
    if primary is None:
      primary = 'combined_score' if 'combined_score' in metric_names else metric_names[0]
    return TaskSpec(
        name=self.name,
        text_fields=tuple(self.text_columns),
        label_names=None if self.regression else tuple(self.label_names),
        metric_names=metric_names,
        primary_metric=primary,
        train_split='train',
        validation_splits=tuple(s for s in self.paths if s.startswith('validation')),
        test_splits=tuple(s for s in self.paths if s.startswith('test')),
        test_has_labels=self.test_has_labels,
        source='local',
        description=f'Local files: {dict(self.paths)}',
    )


class LocalFileError(ValueError):
  """A local task file that cannot be used as it is (format, encoding, header, rows); the message
  names the file (and line) and the fix, in one line."""


class BadRowError(LocalFileError):
  """A row of a local file cannot be used; the message names the file and line."""


def infer_format(path: str, fmt: str | None = None) -> str:
  """The explicit format `fmt`, or the one implied by the file extension."""
  if fmt is not None:
    return fmt
  ext = os.path.splitext(path)[1].lower()
  if ext not in _EXTENSIONS:
    raise LocalFileError(f'Cannot infer the format of {path!r} from its extension {ext!r}; '
                     f'known: {", ".join(sorted(_EXTENSIONS))}. Set the format: '
                     f'--config.local_task.format=csv (one of {", ".join(FORMATS)}; '
                     'LocalTaskConfig.format in code).')
  return _EXTENSIONS[ext]


def local_task_config(local: Mapping) -> LocalTaskConfig:
  """The `LocalTaskConfig` of an experiment config's `local_task` fields.

  `local` holds name, paths, text_columns, label_column, label_names (empty for regression),
  regression, drop_bad_rows, encoding, format ('' = from the extension) and test_has_labels.
  """
  return LocalTaskConfig(
      name=local['name'], paths=dict(local['paths']), text_columns=tuple(local['text_columns']),
      label_column=local['label_column'],
      label_names=tuple(local['label_names']) if local['label_names'] else None,
      regression=local['regression'], drop_bad_rows=local['drop_bad_rows'],
      encoding=local['encoding'], format=local['format'] or None,
      test_has_labels=local['test_has_labels'])


def _decode_error(path: str, encoding: str, error: UnicodeDecodeError) -> LocalFileError:
  """Where in `path` the first undecodable byte is: line and byte offset."""
  offset, where = 0, f'byte {error.start} of a block'
  with open(path, 'rb') as f:
    for line_number, raw in enumerate(f, start=1):
      try:
        raw.decode(encoding)
      except UnicodeDecodeError as e:
        where = f'line {line_number} (byte offset {offset + e.start}, byte {raw[e.start]:#04x})'
        break
      offset += len(raw)
  return LocalFileError(f'{path}, {where}: not valid {encoding}. Set the file\'s encoding: '
                    '--config.local_task.encoding=latin-1 (or cp1252, utf-16, ...; '
                    'LocalTaskConfig.encoding in code).')


def _read_rows(path: str, fmt: str, encoding: str,
               required: list[str]) -> Iterator[tuple[int, dict | None, str]]:
  """`_parse_rows` of one file; a byte the encoding cannot decode raises a `LocalFileError` naming
  the file, the line and the byte offset."""
  try:
    yield from _parse_rows(path, fmt, encoding, required)
  except UnicodeDecodeError as e:
    raise _decode_error(path, encoding, e) from None
  except (FileNotFoundError, IsADirectoryError) as e:
    raise LocalFileError(f'{path}: no such file ({e.strerror}); fix the path in '
                         '--config.local_task.paths (LocalTaskConfig.paths in code).') from None


def _parse_rows(path: str, fmt: str, encoding: str,
                required: list[str]) -> Iterator[tuple[int, dict | None, str]]:
  """Yields (line number, row dict or None, problem) for each data row of a file.

  Line numbers are 1-based with the header on line 1. A row that cannot even be split into
  fields comes back as (line, None, problem). The header (CSV/TSV) or the first JSON object must
  have every `required` column, each named once; otherwise a `LocalFileError` lists the columns
  the file has (or the repeated one and its positions).
  """
  if codecs.lookup(encoding).name == 'utf-8':
    encoding = 'utf-8-sig'  # also reads UTF-8 with a byte-order mark (Excel's "CSV UTF-8")
  with open(path, encoding=encoding, newline='') as f:
    if fmt == 'jsonl':
      schema_checked = False
      for line_number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          yield line_number, None, f'invalid JSON ({e.msg})'
          continue
        if not isinstance(row, dict):
          yield line_number, None, f'expected a JSON object, got {type(row).__name__}'
          continue
        if not schema_checked:
          # The first record defines the schema: a missing column there is a config error.
          _check_columns(path, list(row), required)
          schema_checked = True
        missing = [c for c in required if c not in row]
        yield line_number, row, f'missing {missing}' if missing else ''
      return
    # TSV: no quote handling, GLUE's TSV files contain literal quotes.
    dialect = {'delimiter': '\t', 'quoting': csv.QUOTE_NONE} if fmt == 'tsv' else {}
    reader = csv.reader(f, **dialect)
    header = next(reader, None)
    if header is None:
      raise LocalFileError(f'{path} is empty; a {fmt.upper()} file needs a header line.')
    _check_unique_columns(path, header)
    _check_columns(path, header, required)
    previous_end = reader.line_num
    for fields in reader:
      line_number = previous_end + 1  # a quoted field may span lines: report where the row starts
      previous_end = reader.line_num
      if not fields:
        continue
      if len(fields) != len(header):
        yield line_number, None, f'{len(fields)} fields, the header has {len(header)}'
        continue
      yield line_number, dict(zip(header, fields, strict=True)), ''


def load_local_split(config: LocalTaskConfig, split: str) -> tuple[list[Example], int]:
  """Reads one split's file.

  Args:
    config: the task config.
    split: a key of `config.paths`.

  Returns:
    (examples in file order with idx = 0-based data-row index, number of dropped bad rows).

  Raises:
    BadRowError: for a bad row when `config.drop_bad_rows` is False.
    LocalFileError: for a missing or repeated column (the message lists the file's columns), a
      file that is missing, empty or not decodable.
  """
  if split not in config.paths:
    raise KeyError(f'Task {config.name!r} has no split {split!r}; valid: {list(config.paths)}.')
  path = config.paths[split]
  fmt = infer_format(path, config.format)
  needs_label = not (split.startswith('test') and not config.test_has_labels)
  required = list(config.text_columns) + ([config.label_column] if needs_label else [])
  label_ids = {} if config.regression else {n: i for i, n in enumerate(config.label_names)}

  examples: list[Example] = []
  dropped = 0
  for line_number, row, problem in _read_rows(path, fmt, config.encoding, required):
    if not problem:
      try:
        example = _to_example(row, config, label_ids, needs_label, len(examples) + dropped)
      except ValueError as e:
        problem = str(e)
    if problem:
      message = f'{path}, line {line_number}: {problem}.'
      if not config.drop_bad_rows:
        raise BadRowError(message + ' Fix the row or set LocalTaskConfig.drop_bad_rows=True.')
      logging.debug('Dropping bad row: %s', message)
      dropped += 1
      continue
    examples.append(example)
  if dropped:
    logging.warning('%s: dropped %d bad rows (drop_bad_rows=True).', path, dropped)
  if not examples:
    raise LocalFileError(f'{path}: no usable rows.')
  return examples, dropped


def load_local_task(config: LocalTaskConfig) -> Task:
  """Loads every split of `config.paths` into a `Task` (see the module docstring)."""
  splits, dropped = {}, {}
  for split in config.paths:
    splits[split], dropped[split] = load_local_split(config, split)
  return Task(spec=config.spec(), splits=splits, dropped={k: v for k, v in dropped.items() if v})


def _check_unique_columns(path: str, header: list[str]) -> None:
  """Refuses a header naming a column twice: a row would keep only the last one's value."""
  positions: dict[str, list[int]] = {}
  for position, column in enumerate(header, start=1):
    positions.setdefault(column, []).append(position)
  repeated = {column: where for column, where in positions.items() if len(where) > 1}
  if repeated:
    column, where = next(iter(repeated.items()))
    raise LocalFileError(f'{path}: the header names column {column!r} {len(where)} times (columns '
                     f'{", ".join(map(str, where))}, counted from 1); rename or remove the repeats.')


def _check_columns(path: str, columns: list[str], required: list[str]) -> None:
  missing = [c for c in required if c not in columns]
  if missing:
    raise LocalFileError(f'{path}: no column(s) {missing}; the file has columns {list(columns)}. '
                     'Fix text_columns / label_column in LocalTaskConfig.')


def _to_example(row: dict, config: LocalTaskConfig, label_ids: dict[str, int],
                needs_label: bool, idx: int) -> Example:
  texts = []
  for column in config.text_columns:
    value = row[column]
    if value is None or not isinstance(value, str) or not value.strip():
      raise ValueError(f'missing, empty or non-string text in column {column!r}')
    texts.append(value)
  if not needs_label:
    label = float(NO_LABEL) if config.regression else NO_LABEL
  elif config.regression:
    label = _parse_float(row[config.label_column], config.label_column)
  else:
    label = _parse_class(row[config.label_column], config.label_column, label_ids)
  return Example(text_a=texts[0], text_b=texts[1] if len(texts) == 2 else None, label=label,
                 idx=idx)


def _parse_float(value, column: str) -> float:
  try:
    result = float(value.strip() if isinstance(value, str) else value)
  except (TypeError, ValueError):
    raise ValueError(f'cannot parse {value!r} in column {column!r} as a float') from None
  if not math.isfinite(result):
    raise ValueError(f'non-finite value {value!r} in column {column!r}')
  return result


def _parse_class(value, column: str, label_ids: dict[str, int]) -> int:
  if isinstance(value, str):
    value = value.strip()
    if value in label_ids:
      return label_ids[value]
  # Integer ids are accepted too ('1', 1, 1.0) when in range.
  try:
    as_float = float(value)
  except (TypeError, ValueError):
    as_float = math.nan
  if as_float.is_integer() and 0 <= as_float < len(label_ids):
    return int(as_float)
  raise ValueError(f'unknown label {value!r} in column {column!r}; valid: '
                   f'{", ".join(label_ids)} or ids 0..{len(label_ids) - 1}')

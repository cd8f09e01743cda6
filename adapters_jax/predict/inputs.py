"""The prediction entry point's input lines: one text per line, two tab-separated texts for pair
tasks, and with an adapter column the adapter's name first.

Example:
  texts, names = read_inputs('rows.tsv', adapter_column=True)
  # ['A triumph.', ('A man sleeps.', 'Nobody sleeps.')], ['rotten_tomatoes', 'rte']
"""

from __future__ import annotations

import contextlib
import sys

from adapters_jax.task_kinds.inputs import Text


def open_stream(path: str, mode: str):
  """The file at `path` (UTF-8), or stdin/stdout for '-'."""
  if path == '-':
    return contextlib.nullcontext(sys.stdin if mode == 'r' else sys.stdout)
  return open(path, mode, encoding='utf-8')


def parse_line(line: str) -> Text:
  """A text, or a `(text_a, text_b)` pair when the line holds a tab."""
  return tuple(line.split('\t', 1)) if '\t' in line else line


def read_inputs(path: str, adapter_column: bool = False) -> tuple[list[Text], list[str] | None]:
  """The non-blank lines of `path` ('-' = stdin) as texts or pairs, and with `adapter_column` the
  adapter name of each line (None without).

  Raises:
    ValueError: an adapter-column line without a tab, naming the file and line.
  """
  with open_stream(path, 'r') as stream:
    lines = [line.rstrip('\n') for line in stream if line.strip()]
  if not adapter_column:
    return [parse_line(line) for line in lines], None
  names, texts = [], []
  for number, line in enumerate(lines, 1):
    name, tab, rest = line.partition('\t')
    if not tab:
      raise ValueError(f'{path} line {number}: expected "<adapter>\\t<text>" with '
                       '--adapter_column.')
    names.append(name)
    texts.append(parse_line(rest))
  return texts, names

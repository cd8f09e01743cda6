"""The prediction entry point's input lines: one text per line, two tab-separated texts for pair
tasks, and with an adapter column the adapter's name first.

Every line is kept, so that outputs line up with inputs: a blank (or whitespace-only) line is
`None`, answered with `BLANK_LINE` instead of a prediction. Lines end with `\n` or `\r\n` (both
stripped); the input must be UTF-8 (a leading byte-order mark is dropped).

Example:
  texts, names = read_inputs('rows.tsv', adapter_column=True)
  # ['A triumph.', None, ('A man sleeps.', 'Nobody sleeps.')], ['rotten_tomatoes', None, 'rte']
"""

from __future__ import annotations

import codecs
import contextlib
import sys

from adapters_jax.task_kinds.inputs import Text

# What a blank input line gets in place of a prediction.
BLANK_LINE = {'error': 'blank line'}


def open_output(path: str):
  """The file at `path` (UTF-8, for writing), or stdout for '-'."""
  if path == '-':
    return contextlib.nullcontext(sys.stdout)
  return open(path, 'w', encoding='utf-8')


def parse_line(line: str) -> Text:
  """A text, or a `(text_a, text_b)` pair when the line holds a tab."""
  return tuple(line.split('\t', 1)) if '\t' in line else line


def read_lines(path: str) -> list[str]:
  """The lines of `path` ('-' = stdin), decoded from UTF-8, without their `\n` / `\r\n`.

  Raises:
    ValueError: bytes that are not UTF-8, naming the source, line and byte offsets (one line).
    OSError: a file that cannot be read.
  """
  if path == '-':
    data, source = sys.stdin.buffer.read(), 'stdin'
  else:
    with open(path, 'rb') as f:
      data, source = f.read(), path
  offset = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
  lines = []
  for number, raw in enumerate(data[offset:].split(b'\n'), 1):
    if not raw and offset == len(data):  # after the last line ending: no line
      break
    try:
      lines.append(raw.removesuffix(b'\r').decode('utf-8'))
    except UnicodeDecodeError as e:
      raise ValueError(f'{source} line {number} is not UTF-8: byte {offset + e.start} of the input '
                       f'({e.start} of the line) is {raw[e.start:e.start + 1]!r} ({e.reason}); '
                       'convert it, e.g. iconv -f latin1 -t utf-8.') from None
    offset += len(raw) + 1
  return lines


def read_inputs(path: str, adapter_column: bool = False
                ) -> tuple[list[Text | None], list[str | None] | None]:
  """Every line of `path` ('-' = stdin) as a text or pair (None for a blank line), and with
  `adapter_column` the adapter name of each line (None for a blank line; the list is None without).

  Raises:
    ValueError: bytes that are not UTF-8, or an adapter-column line without a tab, naming the source
      and line.
    OSError: a file that cannot be read.
  """
  lines = [line if line.strip() else None for line in read_lines(path)]
  if not adapter_column:
    return [None if line is None else parse_line(line) for line in lines], None
  names, texts = [], []
  for number, line in enumerate(lines, 1):
    if line is None:
      names.append(None)
      texts.append(None)
      continue
    name, tab, rest = line.partition('\t')
    if not tab:
      raise ValueError(f'{"stdin" if path == "-" else path} line {number}: expected '
                       '"<adapter>\\t<text>" with --adapter_column.')
    names.append(name)
    texts.append(parse_line(rest))
  return texts, names

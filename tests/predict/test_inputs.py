"""The prediction entry point's input lines, read from a file."""

import pytest

from adapters_jax.predict.inputs import read_inputs, read_lines


def test_lines_become_texts_pairs_and_adapter_names(tmp_path):
  # Bugs caught: a pair's second text split again at a later tab, blank lines dropped (outputs no
  # longer line up), the adapter column left in the text.
  path = tmp_path / 'rows.tsv'
  path.write_text('rte\tA man sleeps.\tNobody sleeps.\n \nrotten_tomatoes\tA triumph.\n')
  assert read_inputs(str(path)) == ([('rte', 'A man sleeps.\tNobody sleeps.'), None,
                                     ('rotten_tomatoes', 'A triumph.')], None)
  assert read_inputs(str(path), adapter_column=True) == (
      [('A man sleeps.', 'Nobody sleeps.'), None, 'A triumph.'], ['rte', None, 'rotten_tomatoes'])


def test_line_endings_are_stripped_and_a_last_line_needs_none(tmp_path):
  # Bugs caught: a kept \r (part of the text the model reads), a lone \r taken for a line end, a
  # phantom empty line after the last line ending, a byte-order mark read as text.
  path = tmp_path / 'rows.txt'
  path.write_bytes(b'\xef\xbb\xbfcaf\xc3\xa9\r\n\r\na\rb\nlast')
  assert read_lines(str(path)) == ['caf\u00e9', '', 'a\rb', 'last']
  path.write_bytes(b'one\n')
  assert read_lines(str(path)) == ['one']
  path.write_bytes(b'')
  assert read_lines(str(path)) == []


def test_bytes_that_are_not_utf8_name_the_line_and_offsets(tmp_path):
  # The offsets counted by hand: line 3 starts at byte 4 + 2 = 6; \xff is its byte 2, so byte 8.
  path = tmp_path / 'rows.txt'
  path.write_bytes(b'abc\n\r\nxy\xffz\n')
  with pytest.raises(ValueError, match=r"^.*rows.txt line 3 is not UTF-8: byte 8 of the input "
                     r"\(2 of the line\) is b'\\xff'"):
    read_lines(str(path))


def test_a_line_without_its_adapter_names_file_and_line(tmp_path):
  path = tmp_path / 'rows.tsv'
  path.write_text('rte\tA man sleeps.\nno adapter here\n')
  with pytest.raises(ValueError, match=r'rows.tsv line 2: expected "<adapter>\\t<text>"'):
    read_inputs(str(path), adapter_column=True)

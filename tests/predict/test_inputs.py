"""The prediction entry point's input lines, read from a file."""

import pytest

from adapters_jax.predict.inputs import read_inputs


def test_lines_become_texts_pairs_and_adapter_names(tmp_path):
  # Bugs caught: a pair's second text split again at a later tab, blank lines kept, the adapter
  # column left in the text.
  path = tmp_path / 'rows.tsv'
  path.write_text('rte\tA man sleeps.\tNobody sleeps.\n\nrotten_tomatoes\tA triumph.\n')
  assert read_inputs(str(path)) == ([('rte', 'A man sleeps.\tNobody sleeps.'),
                                     ('rotten_tomatoes', 'A triumph.')], None)
  assert read_inputs(str(path), adapter_column=True) == (
      [('A man sleeps.', 'Nobody sleeps.'), 'A triumph.'], ['rte', 'rotten_tomatoes'])


def test_a_line_without_its_adapter_names_file_and_line(tmp_path):
  path = tmp_path / 'rows.tsv'
  path.write_text('rte\tA man sleeps.\nno adapter here\n')
  with pytest.raises(ValueError, match=r'rows.tsv line 2: expected "<adapter>\\t<text>"'):
    read_inputs(str(path), adapter_column=True)

"""GLUE loading through tfds on `tfds.testing.mock_data` (random examples with GLUE's feature spec;
the builder's own code on GLUE-layout files is tested in test_glue_builder.py)."""

import pytest
import tensorflow_datasets as tfds

from adapters_jax.data import GLUE_TASK_NAMES, get_task, load_glue, load_task


@pytest.mark.parametrize('name', GLUE_TASK_NAMES)
def test_every_glue_task_and_split_loads(name):
  spec = get_task(name)
  with tfds.testing.mock_data(num_examples=4):
    task = load_task(f'glue/{name}')
  assert set(task.splits) == set(spec.splits)
  for split, examples in task.splits.items():
    assert len(examples) == 4, split
    for example in examples:
      assert isinstance(example.text_a, str)
      assert (example.text_b is not None) == spec.is_pair
      if spec.is_regression:
        assert isinstance(example.label, float)
      else:
        assert isinstance(example.label, int)
        assert 0 <= example.label < spec.num_labels
      assert isinstance(example.idx, int)


def test_glue_split_selection_and_errors():
  with tfds.testing.mock_data(num_examples=3):
    examples = load_glue('rte', 'validation')
    assert len(examples) == 3 and examples[0].text_b is not None
    task = load_task('mnli', splits=['validation_mismatched'])
    assert list(task.splits) == ['validation_mismatched']
  with pytest.raises(ValueError, match='validation_matched'):
    load_glue('mnli', 'validation')
  with pytest.raises(KeyError, match='valid: cola'):
    load_glue('sst5', 'train')

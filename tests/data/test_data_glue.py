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


# tfds's GLUE feature names of each task's texts, in model order (segment A, then B), written out
# from tfds's `glue` builder; our loader must read these fields in this order.
TFDS_TEXT_FIELDS = {'cola': ('sentence',), 'sst2': ('sentence',), 'mrpc': ('sentence1', 'sentence2'),
                    'qqp': ('question1', 'question2'), 'stsb': ('sentence1', 'sentence2'),
                    'mnli': ('premise', 'hypothesis'), 'qnli': ('question', 'sentence'),
                    'rte': ('sentence1', 'sentence2'), 'wnli': ('sentence1', 'sentence2')}


@pytest.mark.parametrize('name', GLUE_TASK_NAMES)
def test_glue_rows_map_each_field_label_and_index(name):
  """Mock rows whose every text names its own field: a loader that swaps the two texts of a pair
  task, reads the wrong field, drops the label or the index fails here."""
  import numpy as np
  import tensorflow as tf

  def as_dataset(self, split, **kwargs):
    def rows():
      for i in range(3):
        row = {field: f'{field} {split} {i}'.encode() for field in TFDS_TEXT_FIELDS[name]}
        row['label'] = np.float32(0.5 + i) if name == 'stsb' else np.int64(i % 2)
        row['idx'] = np.int32(100 + i)
        yield row
    return tf.data.Dataset.from_generator(rows, output_signature={
        k: tf.TensorSpec(shape=(), dtype=v) for k, v in self.info.features.dtype.items()})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    examples = load_glue(name, 'validation_matched' if name == 'mnli' else 'validation')
  split = 'validation_matched' if name == 'mnli' else 'validation'
  fields = TFDS_TEXT_FIELDS[name]
  got = [(e.text_a, e.text_b, e.label, e.idx) for e in examples]
  assert got == [(f'{fields[0]} {split} {i}', f'{fields[1]} {split} {i}' if len(fields) == 2 else None,
                  0.5 + i if name == 'stsb' else i % 2, 100 + i) for i in range(3)]

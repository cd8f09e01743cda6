"""Task registry: GLUE specs, packaged specs, lookup errors."""

import pytest

from adapters_jax.data import GLUE_TASK_NAMES, get_task, task_names


def test_glue_specs():
  assert GLUE_TASK_NAMES == ('cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte', 'wnli')
  stsb = get_task('glue/stsb')
  assert stsb.is_regression and stsb.num_labels == 1 and stsb.primary_metric == 'combined_score'
  mnli = get_task('mnli')
  assert mnli.num_labels == 3
  assert mnli.validation_splits == ('validation_matched', 'validation_mismatched')
  assert mnli.test_splits == ('test_matched', 'test_mismatched')
  assert get_task('qqp').text_fields == ('question1', 'question2')
  assert get_task('qnli').text_fields == ('question', 'sentence')
  assert get_task('cola').metric_names == ('matthews',)
  for name in GLUE_TASK_NAMES:
    spec = get_task(name)
    assert not spec.test_has_labels
    assert spec.labelled_splits == (spec.train_split, *spec.validation_splits)
    assert spec.tfds_name == f'glue/{name}'


def test_unknown_task_lists_valid_names():
  with pytest.raises(KeyError, match='rotten_tomatoes') as e:
    get_task('sst3')
  assert 'tweet_sentiment' in str(e.value) and 'wnli' in str(e.value)
  with pytest.raises(KeyError, match='valid: cola'):
    get_task('glue/rotten_tomatoes')
  assert 'rotten_tomatoes' in task_names()

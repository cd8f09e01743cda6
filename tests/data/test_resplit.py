"""Split schemes: Compacter's validation-as-test on a small and a large task, counted by hand."""

import pytest

from adapters_jax.data import Example, Task, get_task, resplit


def _examples(n, offset=0):
  return [Example(f'text {offset + i}', None, i % 2, offset + i) for i in range(n)]


def test_small_task_halves_its_validation_split():
  task = Task(get_task('cola'), {'train': _examples(50), 'validation': _examples(11, 1000),
                                 'test': _examples(7, 2000)})
  new = resplit(task, 'validation_as_test')
  assert new.spec.validation_splits == ('validation',) and new.spec.test_splits == ('test',)
  assert new.spec.test_has_labels
  assert new['train'] == task['train']
  assert len(new['validation']) == 5 and len(new['test']) == 6
  ids = sorted(e.idx for e in new['validation'] + new['test'])
  assert ids == list(range(1000, 1011))  # the original validation split, each example once
  # The same split every time (a run of a table must not see another one).
  assert resplit(task, 'validation_as_test')['validation'] == new['validation']


def test_large_task_holds_out_1000_training_examples():
  task = Task(get_task('mnli'), {'train': _examples(10_000),
                                 'validation_matched': _examples(30, 20_000),
                                 'validation_mismatched': _examples(20, 30_000)})
  new = resplit(task, 'validation_as_test')
  assert len(new['train']) == 9_000 and len(new['validation']) == 1_000
  assert {e.idx for e in new['train']} | {e.idx for e in new['validation']} == set(range(10_000))
  assert new['test_matched'] == task['validation_matched']
  assert new['test_mismatched'] == task['validation_mismatched']
  assert new.spec.test_splits == ('test_matched', 'test_mismatched')


def test_unknown_scheme_and_empty_scheme():
  task = Task(get_task('rte'), {'train': _examples(4), 'validation': _examples(4)})
  assert resplit(task, '') is task
  with pytest.raises(ValueError, match="Unknown split_scheme 'compacter'; valid"):
    resplit(task, 'compacter')

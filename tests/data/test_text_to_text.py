"""GLUE as text-to-text: each task's input and target strings written out by hand from the T5
paper's appendix D, and parsing generated strings back to labels."""

import pytest

from adapters_jax.data import Example, get_task
from adapters_jax.data.text_to_text import parse_label, possible_targets, source_text, target_text

# task -> (text_a, text_b, label, expected input, expected target)
CASES = {
    'cola': ('John made Bill master of himself.', None, 1,
             'cola sentence: John made Bill master of himself.', 'acceptable'),
    'sst2': ('it confirms fincher’s status', None, 1,
             'sst2 sentence: it confirms fincher’s status', 'positive'),
    'mrpc': ('We acted because we saw.', 'We acted because we saw the evidence.', 0,
             'mrpc sentence1: We acted because we saw. sentence2: We acted because we saw the '
             'evidence.', 'not_equivalent'),
    'qqp': ('What is the best way to learn?', 'How do I learn best?', 1,
            'qqp question1: What is the best way to learn? question2: How do I learn best?',
            'duplicate'),
    'stsb': ('A plane is taking off.', 'An air plane is taking off.', 4.79,
             'stsb sentence1: A plane is taking off. sentence2: An air plane is taking off.',
             '4.8'),
    # T5 writes MNLI's hypothesis first; the spec's (model) order is premise, hypothesis.
    'mnli': ('At 8:34, the Boston Center controller received a third transmission.',
             'The Boston Center controller got a third transmission.', 0,
             'mnli hypothesis: The Boston Center controller got a third transmission. premise: At '
             '8:34, the Boston Center controller received a third transmission.', 'entailment'),
    'qnli': ('Where did Jebe die?', 'Genghis Khan recalled Subutai back to Mongolia.', 1,
             'qnli question: Where did Jebe die? sentence: Genghis Khan recalled Subutai back to '
             'Mongolia.', 'not_entailment'),
    'rte': ('A smaller proportion of Yugoslavia’s Italians were settled in Slovenia.',
            'Slovenia has 3,000 inhabitants.', 1,
            'rte sentence1: A smaller proportion of Yugoslavia’s Italians were settled in '
            'Slovenia. sentence2: Slovenia has 3,000 inhabitants.', 'not_entailment'),
    'wnli': ('The trophy does not fit in the suitcase.', 'The suitcase does not fit.', 0,
             'wnli sentence1: The trophy does not fit in the suitcase. sentence2: The suitcase '
             'does not fit.', 'not_entailment'),
}


@pytest.mark.parametrize('task', sorted(CASES))
def test_glue_task_as_text_to_text(task):
  text_a, text_b, label, source, target = CASES[task]
  spec = get_task(task)
  assert source_text(spec, Example(text_a, text_b, label, 0)) == source
  assert target_text(spec, label) == target


def test_every_glue_task_has_a_case():
  from adapters_jax.data import GLUE_TASK_NAMES
  assert set(CASES) == set(GLUE_TASK_NAMES)


def test_packaged_task_follows_the_same_rule():
  spec = get_task('rotten_tomatoes')
  assert source_text(spec, Example('a gem.', None, 1, 0)) == 'rotten_tomatoes text: a gem.'
  assert target_text(spec, 0) == 'rotten'


@pytest.mark.parametrize('score, expected', [(0.0, '0.0'), (5.0, '5.0'), (3.1, '3.2'),
                                             (2.09, '2.0'), (2.11, '2.2'), (0.5, '0.4'),
                                             (0.7, '0.8')])
def test_stsb_targets_round_to_the_nearest_fifth(score, expected):
  # 0.5 / 0.2 = 2.5 steps -> 2 (half to even, as T5's tf.round); 0.7 -> 3.5 -> 4.
  assert target_text(get_task('stsb'), score) == expected


def test_stsb_has_26_possible_targets():
  targets = possible_targets(get_task('stsb'))
  assert targets[:3] == ('0.0', '0.2', '0.4') and targets[-1] == '5.0' and len(targets) == 26


def test_out_of_range_class_and_unlabelled_regression_are_errors():
  with pytest.raises(ValueError, match=r'not a class id in \[0, 3\)'):
    target_text(get_task('mnli'), 3)
  with pytest.raises(ValueError, match='no target'):
    target_text(get_task('stsb'), -1)


@pytest.mark.parametrize('task, text, expected', [
    ('mnli', 'neutral', 1), ('mnli', ' Contradiction ', 2), ('rte', 'not_entailment', 1),
    ('rte', 'not _ entailment', 1),     # a word-piece tokenizer's decoding
    ('rte', 'entailment', 0), ('rte', 'not', None), ('rte', '', None),
    ('cola', 'unacceptable', 0), ('cola', 'acceptable', 1), ('cola', 'acceptable acceptable', None),
    ('stsb', '3.8', 3.8), ('stsb', '3. 8', 3.8), ('stsb', 'three', None), ('stsb', 'nan', None),
])
def test_parse_label(task, text, expected):
  assert parse_label(get_task(task), text) == expected

"""E2E NLG: the challenge's CSV (references grouped per MR), its rendering as prompt/completion
records, and each text metric against a value computed by hand or documented by its library."""

import csv

import pytest

from adapters_jax.data import e2e, text_metrics

ROWS = [
    ('name[The Vaults], eatType[pub], near[Café Adriatic]', 'The Vaults pub is near Café Adriatic.'),
    ('name[Aromi], familyFriendly[yes]', 'Aromi is family friendly.'),
    ('name[The Vaults], eatType[pub], near[Café Adriatic]', 'Near Café Adriatic is The Vaults.'),
]


def _write_csv(path, rows, header=('mr', 'ref')):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def test_references_are_grouped_per_mr_in_first_appearance_order(tmp_path):
  # Bug caught: one item per row (the second reference of The Vaults scored as another input),
  # or the rows re-ordered.
  items = e2e.read_e2e_csv(_write_csv(tmp_path / 'devset.csv', ROWS))
  assert [i.mr for i in items] == [ROWS[0][0], ROWS[1][0]]
  assert items[0].references == ('The Vaults pub is near Café Adriatic.',
                                 'Near Café Adriatic is The Vaults.')
  assert items[1].references == ('Aromi is family friendly.',)


def test_rendering_as_in_the_lora_repository(tmp_path):
  # Bug caught: attribute names not mapped (eatType, familyFriendly), or values cut at spaces.
  items = e2e.read_e2e_csv(_write_csv(tmp_path / 'devset.csv', ROWS))
  train = e2e.training_records(items)
  assert [r.prompt for r in train] == [
      'name : The Vaults | Type : pub | near : Café Adriatic ||',
      'name : The Vaults | Type : pub | near : Café Adriatic ||',
      'name : Aromi | family friendly : yes ||']
  assert [r.completion for r in train] == [' The Vaults pub is near Café Adriatic.',
                                           ' Near Café Adriatic is The Vaults.',
                                           ' Aromi is family friendly.']
  evaluation = e2e.evaluation_records(items)
  assert len(evaluation) == 2 and evaluation[0].references == items[0].references


@pytest.mark.parametrize('rows,header,message', [
    ([('name[A]', 'ok')], ('meaning', 'ref'), r"devset\.csv:1: missing column\(s\) \['mr'\]"),
    ([('name[A]', 'ok'), ('name[B]', '')], ('mr', 'ref'), r'devset\.csv:3: empty ref'),
    ([('name[A], eatType pub', 'ok')], ('mr', 'ref'), r'devset\.csv:2: MR .* attribute\[value\]'),
])
def test_bad_file_names_file_and_line(tmp_path, rows, header, message):
  # Bug caught: a malformed row accepted, or an error without the file and line.
  path = _write_csv(tmp_path / 'devset.csv', rows, header)
  with pytest.raises(e2e.E2EFormatError, match=message):
    e2e.read_e2e_csv(path)


def test_bleu_matches_sacrebleu_documented_example():
  # sacrebleu's README: these hypotheses against two reference streams score BLEU 48.53.
  # Bug caught: references passed as per-prediction lists where sacrebleu wants streams.
  hyps = ['The dog bit the man.', "It wasn't surprising.", 'The man had just bitten him.']
  stream1 = ['The dog bit the man.', 'It was not unexpected.', 'The man bit him first.']
  stream2 = ['The dog had bit the man.', 'No one was surprised.', 'The man had bitten the dog.']
  refs = [list(r) for r in zip(stream1, stream2, strict=True)]
  assert text_metrics.bleu(hyps, refs) == pytest.approx(48.530827, abs=1e-4)


def test_nist_by_hand():
  # References hold 5 words: a x2, b, c, d; bigrams "a b", "b d", "a c".
  # info(a) = log2(5/2), info(b) = info(c) = log2(5); info("a b") = log2(2/1) = 1.
  # Matched unigrams: a, b (sentence 1), a (sentence 2) over 5 hypothesis words; matched bigram
  # "a b" over 3 hypothesis bigrams; lengths equal, so no brevity penalty.
  # Bug caught: references and hypotheses swapped, or tokens compared as characters.
  import math

  expected = (2 * math.log2(2.5) + math.log2(5)) / 5 + 1 / 3
  assert text_metrics.nist(['a b c', 'a b'], [['a b d'], ['a c']], n=2) == pytest.approx(expected)
  assert text_metrics.nist(['', 'x'], [['a b'], ['c']]) == 0.0  # no n-gram: 0, not an error


def test_rouge_l_by_hand_best_reference():
  # "the cat sat on the mat" vs "the cat is on the mat": LCS 5 of 6 and 6 -> F 5/6; vs "a dog" 0.
  # "a dog ran" vs "a dog": LCS 2, P 2/3, R 1 -> F 0.8. Mean x 100 = (83.33 + 80) / 2.
  # Bug caught: averaging over references instead of taking the best, or first reference only.
  value = text_metrics.rouge_l(['the cat sat on the mat', 'a dog ran'],
                               [['a dog', 'the cat is on the mat'], ['a dog']])
  assert value == pytest.approx(100 * (5 / 6 + 0.8) / 2)


def test_cider_by_hand():
  # Two inputs sharing no n-gram: an exact prediction has cosine 1 at every n (x 10, CIDEr's
  # scale), a prediction sharing nothing 0; the corpus mean is (10 + 0) / 2.
  # Bug caught: predictions paired with the wrong references, or a per-corpus score of 1 input.
  refs = [['one two three four five'], ['alpha beta gamma delta eps']]
  assert text_metrics.cider(['one two three four five', 'alpha beta gamma delta eps'],
                            refs) == pytest.approx(10.0)
  assert text_metrics.cider(['one two three four five', 'six seven eight nine ten'],
                            refs) == pytest.approx(5.0)


def test_metrics_refuse_mismatched_lengths():
  with pytest.raises(ValueError, match='2 predictions but 1 reference lists'):
    text_metrics.generation_metrics(['a', 'b'], [['a']])


def test_load_task_reads_the_challenge_files_from_data_dir(tmp_path):
  # Bug caught: validation scored per (MR, reference) row instead of per MR with all references,
  # or training on one reference per MR only.
  from adapters_jax.data import load_task

  for name in ('trainset.csv', 'devset.csv', 'testset_w_refs.csv'):
    _write_csv(tmp_path / name, ROWS)
  task = load_task('e2e_nlg', data_dir=str(tmp_path))
  assert len(task['train']) == 3 and len(task['validation']) == len(task['test']) == 2
  assert task['validation'][0].references == ('The Vaults pub is near Café Adriatic.',
                                              'Near Café Adriatic is The Vaults.')
  (tmp_path / 'devset.csv').unlink()
  with pytest.raises(ValueError, match=r'devset\.csv not found'):
    load_task('e2e_nlg', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match='set --config.data_dir'):
    load_task('e2e_nlg')

"""Local CSV/TSV/JSONL tasks: formats, label parsing, bad rows with file and line, columns."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import pytest

from adapters_jax.data import BadRowError, LocalTaskConfig, load_task, local_task_config
from adapters_jax.data.local_files import LocalFileError

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _write(path, text):
  path.write_text(text, encoding='utf-8')
  return str(path)


def test_csv_pair_task_with_quoted_newlines_and_label_ids(tmp_path):
  train = _write(tmp_path / 'train.csv',
                 'premise,hypothesis,label\n'
                 'a cat,"an animal, surely",entailment\n'
                 '"two\nlines",x,1\n'
                 'p,h,not_entailment\n')
  valid = _write(tmp_path / 'dev.tsv', 'premise\thypothesis\tlabel\n"q\tr"\tentailment\n')
  config = LocalTaskConfig(name='nli', paths={'train': train, 'validation': valid},
                           text_columns=('premise', 'hypothesis'),
                           label_names=('entailment', 'not_entailment'))
  task = load_task(config)
  assert task.spec.is_pair and task.spec.num_labels == 2
  assert task.spec.metric_names == ('accuracy', 'f1')
  assert [e.label for e in task['train']] == [0, 1, 1]
  assert task['train'][1].text_a == 'two\nlines'
  assert task['train'][0].text_b == 'an animal, surely'
  assert task['validation'][0].text_a == '"q'  # TSV quotes are literal
  assert task.dropped == {}


def test_jsonl_regression_and_unlabelled_test(tmp_path):
  train = tmp_path / 'train.jsonl'
  train.write_text('\n'.join(json.dumps(r) for r in [
      {'text': 'good', 'score': 4.5}, {'text': 'bad', 'score': '0.5'}]) + '\n\n')
  test = _write(tmp_path / 'test.jsonl', json.dumps({'text': 'hidden'}) + '\n')
  config = LocalTaskConfig(name='reg', paths={'train': str(train), 'test': test},
                           text_columns=('text',), label_column='score', regression=True,
                           test_has_labels=False)
  task = load_task(config)
  assert [e.label for e in task['train']] == [4.5, 0.5]
  assert task['test'][0].label == -1.0
  assert task.spec.primary_metric == 'combined_score' and task.spec.is_regression


@pytest.mark.parametrize('body, line, problem', [
    ('text,label\nok,pos\n,neg\n', 3, 'empty'),
    ('text,label\nok,pos\n"multi\nline",pos\nfine,meh\n', 5, "unknown label 'meh'"),
    ('text,label\nok,pos\nextra,pos,field\n', 3, '3 fields'),
])
def test_bad_rows_name_file_and_line(tmp_path, body, line, problem):
  path = _write(tmp_path / 'train.csv', body)
  config = LocalTaskConfig(name='t', paths={'train': path}, text_columns=('text',),
                           label_names=('neg', 'pos'))
  with pytest.raises(BadRowError, match=f'train.csv, line {line}: .*{problem}'):
    load_task(config)
  dropped = load_task(LocalTaskConfig(name='t', paths={'train': path}, text_columns=('text',),
                                      label_names=('neg', 'pos'), drop_bad_rows=True))
  assert dropped.dropped == {'train': 1}
  assert len(dropped['train']) == body.count('pos') - (1 if 'field' in body else 0)


def test_bad_float_and_json_lines(tmp_path):
  path = _write(tmp_path / 'd.jsonl', '{"t": "a", "y": 1}\n{"t": "b", "y": "x"}\n{oops\n'
                '{"t": "c", "y": NaN}\n')
  config = LocalTaskConfig(name='r', paths={'train': path}, text_columns=('t',),
                           label_column='y', regression=True)
  with pytest.raises(BadRowError, match=r'd.jsonl, line 2: .*float'):
    load_task(config)
  relaxed = LocalTaskConfig(name='r', paths={'train': path}, text_columns=('t',),
                            label_column='y', regression=True, drop_bad_rows=True)
  task = load_task(relaxed)
  assert [e.text_a for e in task['train']] == ['a'] and task.dropped == {'train': 3}


def test_unknown_column_lists_file_columns(tmp_path):
  path = _write(tmp_path / 'train.csv', 'sentence,gold\nhi,1\n')
  config = LocalTaskConfig(name='t', paths={'train': path}, text_columns=('text',),
                           label_names=('a', 'b'))
  with pytest.raises(ValueError, match=r"no column\(s\) \['text', 'label'\].*\['sentence', 'gold'\]"):
    load_task(config)


def test_config_errors(tmp_path):
  with pytest.raises(ValueError, match='label_names for classification or regression'):
    LocalTaskConfig(name='t', paths={'train': 'x.csv'}, text_columns=('a',))
  with pytest.raises(ValueError, match='validation'):
    LocalTaskConfig(name='t', paths={'dev': 'x.csv'}, text_columns=('a',), label_names=('a', 'b'))
  config = LocalTaskConfig(name='t', paths={'train': str(tmp_path / 'x.txt')},
                           text_columns=('a',), label_names=('a', 'b'))
  with pytest.raises(ValueError, match='LocalTaskConfig.format'):
    load_task(config)


def test_undecodable_byte_names_file_line_offset_and_the_fix(tmp_path):
  path = tmp_path / 'train.csv'
  body = 'text,label\nplain,pos\ncaf\u00e9 cr\u00e8me,neg\n'
  path.write_bytes(body.encode('latin-1'))
  config = LocalTaskConfig(name='t', paths={'train': str(path)}, text_columns=('text',),
                           label_names=('neg', 'pos'))
  offset = len(b'text,label\nplain,pos\ncaf')  # the first byte utf-8 cannot decode: 0xe9
  with pytest.raises(ValueError, match=rf'train.csv, line 3 \(byte offset {offset}, byte 0xe9\): '
                     r'not valid utf-8\. .*--config.local_task.encoding=latin-1'):
    load_task(config)
  latin = LocalTaskConfig(name='t', paths={'train': str(path)}, text_columns=('text',),
                          label_names=('neg', 'pos'), encoding='latin-1')
  assert [e.text_a for e in load_task(latin)['train']] == ['plain', 'caf\u00e9 cr\u00e8me']


def test_utf8_with_a_byte_order_mark_and_an_unknown_encoding(tmp_path):
  path = tmp_path / 'train.csv'
  path.write_bytes('\ufefftext,label\nhi,pos\n'.encode())
  config = LocalTaskConfig(name='t', paths={'train': str(path)}, text_columns=('text',),
                           label_names=('neg', 'pos'))
  assert load_task(config)['train'][0].text_a == 'hi'  # the BOM is not part of the header
  with pytest.raises(ValueError, match="Unknown encoding 'latin-9000'.*local_task.encoding"):
    LocalTaskConfig(name='t', paths={'train': str(path)}, text_columns=('text',),
                    label_names=('neg', 'pos'), encoding='latin-9000')


def test_experiment_config_fields_reach_the_task(tmp_path):
  from adapters_jax.config.schema import run_config

  train = _write(tmp_path / 'train.txt', 'text\tlabel\na, b\tpos\n')
  test = _write(tmp_path / 'test.txt', 'text\nunlabelled\n')
  local = run_config().local_task
  assert local.encoding == 'utf-8' and local.format == '' and local.test_has_labels
  local.paths = {'train': train, 'test': test}
  local.label_names = ('neg', 'pos')
  local.format = 'tsv'                # .txt says nothing: the config does
  local.test_has_labels = False
  task = load_task(local_task_config(local))
  assert task['train'][0].text_a == 'a, b' and task['train'][0].label == 1
  assert task['test'][0].label == -1
  local.format = ''
  with pytest.raises(ValueError, match=r'--config.local_task.format=csv'):
    load_task(local_task_config(local))


def test_blank_lines_inside_files_are_skipped_not_the_end(tmp_path):
  """A blank line between rows (JSONL, CSV) is skipped and the rows after it still load; line
  numbers count it (a bad row after it is reported on its own line)."""
  jsonl = _write(tmp_path / 'train.jsonl', '\n'.join([
      json.dumps({'text': 'a', 'label': 'pos'}), '', '  ',
      json.dumps({'text': 'b', 'label': 'neg'}), json.dumps({'text': 'c', 'label': 'meh'})]) + '\n')
  csv_path = _write(tmp_path / 'train.csv', 'text,label\na,pos\n\nb,neg\n')
  for path, texts in ((jsonl, ['a', 'b']), (csv_path, ['a', 'b'])):
    config = LocalTaskConfig(name='t', paths={'train': path}, text_columns=('text',),
                             label_names=('neg', 'pos'), drop_bad_rows=True)
    task = load_task(config)
    assert [e.text_a for e in task['train']] == texts
  with pytest.raises(BadRowError, match="train.jsonl, line 5: .*unknown label 'meh'"):
    load_task(LocalTaskConfig(name='t', paths={'train': jsonl}, text_columns=('text',),
                              label_names=('neg', 'pos')))


@pytest.mark.parametrize('suffix', ['csv', 'tsv'])
def test_an_empty_file_names_its_format_and_the_missing_header(tmp_path, suffix):
  path = _write(tmp_path / f'train.{suffix}', '')
  config = LocalTaskConfig(name='t', paths={'train': path}, text_columns=('text',),
                           label_names=('neg', 'pos'))
  with pytest.raises(ValueError, match=f'train.{suffix} is empty; a {suffix.upper()} file needs a '
                                       'header line'):
    load_task(config)


def test_each_dropped_row_is_logged_with_its_file_and_line(tmp_path, caplog):
  path = _write(tmp_path / 'train.csv', 'text,label\nok,pos\nbad,meh\n,neg\n')
  config = LocalTaskConfig(name='t', paths={'train': path}, text_columns=('text',),
                           label_names=('neg', 'pos'), drop_bad_rows=True)
  with caplog.at_level(logging.DEBUG):
    task = load_task(config)
  assert [e.text_a for e in task['train']] == ['ok'] and task.dropped == {'train': 2}
  messages = [r.getMessage() for r in caplog.records if 'Dropping bad row' in r.getMessage()]
  assert len(messages) == 2
  assert "train.csv, line 3: unknown label 'meh'" in messages[0] and 'train.csv, line 4' in messages[1]


@pytest.mark.parametrize('suffix,sep', [('.csv', ','), ('.tsv', '\t')])
def test_a_header_naming_a_column_twice_is_refused_with_its_positions(tmp_path, suffix, sep):
  # Before: each row kept the last `text` (here empty) and the error blamed line 2's text, or the
  # run trained on the wrong column without a word.
  path = _write(tmp_path / f'train{suffix}', sep.join(['text', 'label', 'text']) + '\n'
                + sep.join(['good', 'pos', '']) + '\n')
  config = LocalTaskConfig(name='t', paths={'train': path}, text_columns=('text',),
                           label_names=('neg', 'pos'))
  with pytest.raises(LocalFileError) as raised:
    load_task(config)
  assert str(raised.value) == (f"{path}: the header names column 'text' 2 times (columns 1, 3, "
                               'counted from 1); rename or remove the repeats.')


def test_a_missing_file_is_named(tmp_path):
  config = LocalTaskConfig(name='t', paths={'train': str(tmp_path / 'nope.csv')}, text_columns=('text',),
                           label_names=('neg', 'pos'))
  with pytest.raises(LocalFileError, match=f'{tmp_path / "nope.csv"}: no such file'):
    load_task(config)


@pytest.mark.slow
def test_a_repeated_column_stops_the_training_cli_in_one_line(tmp_path):
  for name in ('train.csv', 'dev.csv'):
    _write(tmp_path / name, 'text,label,text\na good film,pos,\na bad film,neg,\n')
  args = [sys.executable, '-m', 'experiments.train', '--config=experiments/configs/glue.py:local,smoke',
          f'--workdir={tmp_path / "run"}', f'--config.local_task.paths.train={tmp_path / "train.csv"}',
          f'--config.local_task.paths.validation={tmp_path / "dev.csv"}',
          '--config.local_task.label_names=("neg","pos")']
  result = subprocess.run(args, cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
  assert lines[0].endswith(f"{tmp_path / 'train.csv'}: the header names column 'text' 2 times (columns "
                           '1, 3, counted from 1); rename or remove the repeats.')

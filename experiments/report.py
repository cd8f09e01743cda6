r"""Collects a sweep's results and puts them beside the paper's numbers.

  python -m experiments.report --sweep_dir=workdirs/mini_rotten_tomatoes \
      --config=experiments/configs/mini_rotten_tomatoes.py --out_dir=docs/results/mini_rotten_tomatoes

Reads every result.json under --sweep_dir; per (task, method label) picks the hyperparameters with
the best mean validation score over seeds and reports the test score (validation where the test
split has no labels, e.g. GLUE) as mean ± std over those seeds, with the paper's number, the
difference and the trainable-parameter share. The config file (default: the one the sweep's
runs.json names) supplies `method_label(config)`, `COLUMNS`, `PAPER` / `PAPER_PARAMS`, `TITLE`,
`REPORT_NOTES`, `REFERENCE` (a row to show differences to, e.g. full fine-tuning) and
`PAPER_TRAIN_SECONDS` / `PAPER_HARDWARE` (the paper's train time per label, shown beside the
runs' mean `wall_time_s`), all optional.
Writes report.md, report.csv and report.png into --out_dir (default: --sweep_dir) and prints the
Markdown table.
"""

import datetime
import json
import os
import shlex
import sys

from absl import app, flags

from adapters_jax import sweeps
from adapters_jax.config import loading
from adapters_jax.sweeps import report
from experiments import entry_point

flags.DEFINE_string('sweep_dir', None, 'The sweep directory (one workdir per run).')
flags.DEFINE_string('config', '', 'The sweep\'s config file (default: from runs.json).')
flags.DEFINE_string('out_dir', '', 'Where report.md/.csv/.png go (default: --sweep_dir).')
flags.DEFINE_string('title', '', 'Title of the table and plot (default: the config\'s TITLE).')
flags.mark_flags_as_required(['sweep_dir'])
FLAGS = flags.FLAGS


def _config_path(sweep_dir: str) -> str:
  if FLAGS.config:
    return FLAGS.config
  plan = os.path.join(sweep_dir, sweeps.RUNS_FILE)
  if os.path.exists(plan):
    with open(plan) as f:
      return json.load(f)['config']
  return ''


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  results = report.collect(FLAGS.sweep_dir)
  if not results:
    raise app.UsageError(f'No {sweeps.RESULT_FILE} under {FLAGS.sweep_dir}.')
  config_path = _config_path(FLAGS.sweep_dir)
  module = loading.load_config_module(config_path) if config_path else None
  label_fn = getattr(module, 'method_label', report.default_label)
  columns = getattr(module, 'COLUMNS', None)
  paper = getattr(module, 'PAPER', {})
  paper_params = getattr(module, 'PAPER_PARAMS', {})
  title = FLAGS.title or getattr(module, 'TITLE', '') or os.path.basename(FLAGS.sweep_dir)

  rows = report.summarize(results, label_fn, columns, paper,
                          label_order=getattr(module, 'LABELS', ()))
  missing = report.missing_runs(FLAGS.sweep_dir)
  out_dir = FLAGS.out_dir or FLAGS.sweep_dir
  os.makedirs(out_dir, exist_ok=True)
  command = shlex.join(['python', '-m', 'experiments.report'] + sys.argv[1:])
  header = [f'# {title}', '',
            f'Made {datetime.date.today().isoformat()} by `{command}` from {len(results)} runs'
            f'{f" ({len(missing)} planned runs have no result)" if missing else ""}.',
            '',
            'Ours: mean ± std over seeds of the runs with the best mean validation score; '
            '"Validation (selection)" is that mean. Scores ×100.']
  if any(not row.split.startswith('test') for row in rows):
    header[-1] += (' Where the split is validation, the test labels are hidden (GLUE), so the '
                   'selection and the reported score use the same split; the paper may report '
                   'test-server scores (see the notes).')
  header += ['', '']
  notes = getattr(module, 'REPORT_NOTES', '')
  reference = getattr(module, 'REFERENCE', None)
  text = '\n'.join(header) + report.markdown_table(rows, paper, paper_params, reference)
  paper_seconds = getattr(module, 'PAPER_TRAIN_SECONDS', None)
  if paper_seconds:
    text += '\n' + report.time_table(rows, paper_seconds, getattr(module, 'PAPER_HARDWARE', ''))
  if notes:
    text += '\n' + notes.strip() + '\n'
  if missing:
    text += (f'\n<details><summary>{len(missing)} planned runs without a result</summary>\n\n'
             + ', '.join(missing) + '\n</details>\n')
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write(text)
  report.write_csv(rows, os.path.join(out_dir, 'report.csv'))
  report.plot(rows, os.path.join(out_dir, 'report.png'), title=title)
  print(text)
  print(f'Wrote report.md, report.csv and report.png to {out_dir}.')


if __name__ == '__main__':
  entry_point.run(main)

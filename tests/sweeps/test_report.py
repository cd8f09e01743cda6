"""The report: selection by mean validation over seeds, seed spread, paper columns, table, CSV,
plot and the entry point, on hand-made result.json files (the math is checked by hand)."""

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest

from adapters_jax import sweeps
from adapters_jax.sweeps import report
from experiments.configs import houlsby_glue

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fake_result(task, method, lr, seed, val, test=None, size=None, trainable=1000, total=100000,
                validation_split='validation', metric='accuracy', extra_val=None):
  options = {} if size is None else {'size': size}
  validation = {validation_split: {metric: val, 'f1': val / 2}}
  validation.update(extra_val or {})
  return {
      'task': task, 'method': method, 'model': 'm',
      'config': {'task': task, 'method': method, 'method_options': options, 'learning_rate': lr,
                 'seed': seed},
      'trainable_params': trainable, 'total_params': total,
      'trainable_percent': 100.0 * trainable / total, 'select_metric': metric,
      'validation_metrics': validation,
      'test_metrics': {} if test is None else {'test': {metric: test, 'f1': test / 2}},
      'best_step': 10, 'workdir': f'/s/{task}_{method}_{size}_{lr}_{seed}',
  }


def mini_results():
  results = []
  # lr 1e-3: mean val 0.80 (one lucky seed at 0.90); lr 3e-3: mean val 0.82 -> 3e-3 wins.
  for seed, (val, test) in enumerate([(0.90, 0.70), (0.75, 0.71), (0.75, 0.72)]):
    results.append(fake_result('rotten_tomatoes', 'houlsby', 1e-3, seed, val, test, size=64))
  for seed, (val, test) in enumerate([(0.82, 0.80), (0.81, 0.84), (0.83, 0.82)]):
    results.append(fake_result('rotten_tomatoes', 'houlsby', 3e-3, seed, val, test, size=64))
  for seed, (val, test) in enumerate([(0.85, 0.85), (0.84, 0.86)]):
    results.append(fake_result('rotten_tomatoes', 'full', 1e-4, seed, val, test,
                               trainable=100000))
  return results


def test_selection_uses_the_mean_over_seeds_and_reports_test_mean_and_std():
  rows = report.summarize(mini_results())
  assert [r.label for r in rows] == ['houlsby (size=64)', 'full']
  houlsby, full = rows
  assert houlsby.selected == 'learning_rate=0.003'
  assert houlsby.seeds == 3 and houlsby.split == 'test' and houlsby.metric == 'accuracy'
  assert houlsby.mean == pytest.approx(82.0)
  assert houlsby.std == pytest.approx(statistics.stdev([80.0, 84.0, 82.0]))
  assert houlsby.validation_mean == pytest.approx(82.0)
  assert houlsby.trainable_percent == pytest.approx(1.0)
  assert full.mean == pytest.approx(85.5) and full.std == pytest.approx(statistics.stdev([85, 86]))
  assert full.selected == ''  # one candidate: nothing varies
  assert houlsby.runs == ['rotten_tomatoes_houlsby_64_0.003_0', 'rotten_tomatoes_houlsby_64_0.003_1',
                          'rotten_tomatoes_houlsby_64_0.003_2']


def test_one_seed_has_zero_std_and_custom_labels():
  results = [fake_result('rte', 'lora', 1e-3, 0, 0.6, 0.5)]
  (row,) = report.summarize(results, label_fn=lambda c: 'LoRA', paper={('rte', 'LoRA'): 52.0})
  assert row.label == 'LoRA' and row.std == 0.0 and row.seeds == 1
  assert row.paper == 52.0 and row.diff == pytest.approx(-2.0)


def test_glue_reports_validation_and_paper_columns_with_multi_label_runs():
  results = []
  for size, lr, vals in ((8, 3e-4, (0.70, 0.72)), (64, 3e-4, (0.68, 0.69)),
                         (64, 3e-3, (0.60, 0.61))):
    for seed, val in enumerate(vals):
      results.append(fake_result('rte', 'houlsby', lr, seed, val, size=size))
  for seed, (m, mm) in enumerate([(0.84, 0.83), (0.86, 0.85)]):
    results.append(fake_result('mnli', 'houlsby', 3e-4, seed, m, size=64,
                               validation_split='validation_matched',
                               extra_val={'validation_mismatched': {'accuracy': mm}}))
  rows = report.summarize(results, houlsby_glue.method_label, houlsby_glue.COLUMNS,
                          houlsby_glue.PAPER)
  cells = {(r.column, r.label): r for r in rows}
  assert set(cells) == {('MNLI-m', 'adapters (8-256)'), ('MNLI-m', 'adapters (64)'),
                        ('MNLI-mm', 'adapters (8-256)'), ('MNLI-mm', 'adapters (64)'),
                        ('RTE', 'adapters (8-256)'), ('RTE', 'adapters (64)')}
  # "8-256" picks size 8 (mean 0.71); "64" only sees size-64 runs and picks lr 3e-4 (0.685).
  assert cells['RTE', 'adapters (8-256)'].mean == pytest.approx(71.0)
  assert 'method_options.size=8' in cells['RTE', 'adapters (8-256)'].selected
  assert cells['RTE', 'adapters (64)'].mean == pytest.approx(68.5)
  assert cells['RTE', 'adapters (64)'].split == 'validation'  # GLUE test labels are hidden
  assert cells['RTE', 'adapters (64)'].paper == 68.8
  assert cells['MNLI-mm', 'adapters (64)'].split == 'validation_mismatched'
  assert cells['MNLI-mm', 'adapters (64)'].mean == pytest.approx(84.0)
  assert cells['MNLI-m', 'adapters (64)'].mean == pytest.approx(85.0)
  text = report.markdown_table(rows, houlsby_glue.PAPER, houlsby_glue.PAPER_PARAMS)
  assert '| RTE | adapters (64) | 68.5 | ± 0.7 (2) | validation · accuracy | 68.8 | -0.3 |' in text
  assert 'Average over MNLI-m, MNLI-mm, RTE' in text
  avg = (85.0 + 84.0 + 68.5) / 3
  assert f'| adapters (64) | {avg:.1f} | 79.6 | {avg - 79.6:+.1f} |' in text


def test_csv_and_plot(tmp_path):
  rows = report.summarize(mini_results())
  report.write_csv(rows, str(tmp_path / 'r.csv'))
  with open(tmp_path / 'r.csv') as f:
    records = list(csv.DictReader(f))
  assert [r['label'] for r in records] == ['houlsby (size=64)', 'full']
  assert float(records[0]['mean']) == pytest.approx(82.0) and records[0]['paper'] == ''
  report.plot(rows, str(tmp_path / 'r.png'), title='t')
  assert (tmp_path / 'r.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.slow
def test_report_entry_point_writes_table_csv_and_plot(tmp_path):
  sweep_dir = tmp_path / 'sweep'
  for result in mini_results():
    workdir = sweep_dir / os.path.basename(result['workdir'])
    workdir.mkdir(parents=True)
    (workdir / sweeps.RESULT_FILE).write_text(json.dumps(result))
  # A planned run without a result is listed as missing.
  (sweep_dir / sweeps.RUNS_FILE).write_text(json.dumps(
      {'config': os.path.join(ROOT, 'experiments/configs/mini_rotten_tomatoes.py'),
       'runs': [{'name': 'never_ran'}]}))
  out = subprocess.run([sys.executable, '-m', 'experiments.report', f'--sweep_dir={sweep_dir}',
                        f'--out_dir={tmp_path / "out"}'], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  text = (tmp_path / 'out' / 'report.md').read_text()
  # The config's method_label names the rows.
  assert '| rotten_tomatoes | houlsby (64) | 82.0 |' in text
  assert '1 planned runs without a result' in text and 'never_ran' in text
  assert (tmp_path / 'out' / 'report.csv').exists() and (tmp_path / 'out' / 'report.png').exists()


def test_reference_column_shows_the_difference_to_a_row():
  rows = report.summarize(mini_results())
  text = report.markdown_table(rows, reference='full')
  assert 'Δ vs full |' in text
  assert '| rotten_tomatoes | houlsby (size=64) | 82.0 | ± 2.0 (3) | test · accuracy | -3.5 |' in text
  assert '| rotten_tomatoes | full | 85.5 | ± 0.7 (2) | test · accuracy | +0.0 |' in text


def test_e2e_report_puts_the_prefix_row_beside_lora_with_the_papers_scores():
  from experiments.configs import lora_e2e
  results = []
  for method, options, seed in (('lora', {'rank': 4}, 0), ('prefix_tuning', {'prefix_length': 5}, 0),
                                ('prefix_tuning', {'prefix_length': 5}, 1)):
    scores = {'bleu': 0.6 + seed / 100, 'nist': 8.0, 'rouge_l': 0.7, 'cider': 2.0}
    result = fake_result('e2e_nlg', method, 8e-5, seed, 0.6, metric='bleu')
    result['config'].update(model='openai-community/gpt2-medium', method_options=options)
    result['validation_metrics'] = {'validation': scores}
    result['test_metrics'] = {'test': scores}
    results.append(result)
  rows = report.summarize(results, lora_e2e.method_label, lora_e2e.COLUMNS, lora_e2e.PAPER)
  cells = {(r.column, r.label): r for r in rows}
  assert {label for _, label in cells} == {'GPT-2 M (LoRA)', lora_e2e.PREFIX}
  paper = {column: cells[column, lora_e2e.PREFIX].paper for column in ('BLEU', 'NIST', 'ROUGE-L',
                                                                      'CIDEr')}
  assert paper == {'BLEU': 69.7, 'NIST': 8.81, 'ROUGE-L': 71.4, 'CIDEr': 2.49}
  assert cells['BLEU', lora_e2e.PREFIX].seeds == 2 and cells['BLEU', 'GPT-2 M (LoRA)'].paper == 70.4
  text = report.markdown_table(rows, lora_e2e.PAPER, lora_e2e.PAPER_PARAMS)
  assert lora_e2e.PREFIX in text and '69.7' in text


def test_peft_metamathqa_report_puts_pefts_accuracy_and_train_time_beside_ours():
  # Two runs of the config's own sweep (LoRA r32 and prompt tuning at lr 1e-3), named by its
  # method_label; PEFT's published test accuracy (x100) and train seconds sit on their rows.
  from experiments.configs import peft_metamathqa

  results = []
  for overrides, (val, test, seconds) in zip(
      [peft_metamathqa.sweep()[0], peft_metamathqa.sweep()[-1]],
      [(0.5, 0.45, 1200.0), (0.3, 0.25, 3000.0)], strict=True):
    result = fake_result('metamathqa', overrides['method'], overrides['learning_rate'], 0, val,
                         test)
    result['config']['method_options'] = overrides['method_options']
    result['wall_time_s'] = seconds
    results.append(result)
  rows = report.summarize(results, peft_metamathqa.method_label, peft_metamathqa.COLUMNS,
                          peft_metamathqa.PAPER, label_order=peft_metamathqa.LABELS)
  table = report.markdown_table(rows, peft_metamathqa.PAPER, peft_metamathqa.PAPER_PARAMS)
  assert '| GSM8K | LoRA r32 | 45.0 | ± 0.0 (1) | test · accuracy | 47.8 | -2.8 |' in table
  assert '| GSM8K | Prompt tuning (200, lr 1e-3) | 25.0 | ± 0.0 (1) | test · accuracy | 23.4 |' in table
  times = report.time_table(rows, peft_metamathqa.PAPER_TRAIN_SECONDS, 'one L40S')
  assert '| LoRA r32 | 1200 | 942 | 1.27 |' in times  # 1200 / 941.96
  assert '| Prompt tuning (200, lr 1e-3) | 3000 | 1480 | 2.03 |' in times  # 3000 / 1480.46
  assert 'Paper: one L40S.' in times

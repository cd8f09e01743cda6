"""A sweep's results beside a paper's numbers: selection on validation, seed spread, table, plot.

Selection (per table cell = task column × method label): the runs of a (task, label) are grouped by
their hyperparameters (the whole config except the seed); the group with the best *mean*
validation score over its seeds wins (the score is the run's model-selection metric on the task's
first validation split, at its best step); the cell reports that group's mean ± std over seeds of
the test score, or of the validation score when the test split has no labels (GLUE).

Example:
  results = collect('workdirs/mini_rotten_tomatoes')
  rows = summarize(results, label_fn=lambda c: c['method'])
  print(markdown_table(rows, paper={}))
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from adapters_jax.sweeps import RESULT_FILE, RUNS_FILE

LabelFn = Callable[[dict[str, Any]], 'str | Sequence[str]']
SCALE = 100.0  # metrics in [0, 1] (or [-1, 1]) are shown as percentages, like the papers


@dataclasses.dataclass(frozen=True)
class Column:
  """One column of a paper table: a task's metric on a split pair.

  Attributes:
    name: the paper's column name, e.g. 'MNLI-mm'.
    task: our task name, e.g. 'mnli'.
    metric: the metric shown, e.g. 'spearman' (selection always uses the run's select_metric).
    validation_split: the split shown when the test split has no labels.
    test_split: the split shown when it has labels.
  """

  name: str
  task: str
  metric: str | None = None
  validation_split: str | None = None
  test_split: str | None = None


@dataclasses.dataclass
class Row:
  """One cell of the table: a column × method label, after selection."""

  column: str
  task: str
  label: str
  split: str                 # where `mean`/`std` come from, e.g. 'test' or 'validation'
  metric: str
  mean: float                # ×100
  std: float                 # ×100, over seeds (0 for one seed)
  seeds: int
  validation_mean: float     # ×100: the selection score's mean over seeds
  trainable_params: int
  trainable_percent: float
  selected: str              # the winning hyperparameters, e.g. 'learning_rate=0.003'
  runs: list[str]
  paper: float | None = None
  wall_time_s: float | None = None  # mean over the seeds of the runs' `wall_time_s`

  @property
  def diff(self) -> float | None:
    return None if self.paper is None else self.mean - self.paper


def collect(sweep_dir: str) -> list[dict[str, Any]]:
  """Every `result.json` under `sweep_dir` (any depth), each with its `workdir` added."""
  results = []
  pattern = os.path.join(sweep_dir, '**', RESULT_FILE)
  for path in sorted(glob.glob(pattern, recursive=True)):
    with open(path) as f:
      result = json.load(f)
    result['workdir'] = os.path.dirname(path)
    results.append(result)
  return results


def missing_runs(sweep_dir: str) -> list[str]:
  """Runs the sweep's plan (`runs.json`) lists that have no result (failed, running or not run)."""
  path = os.path.join(sweep_dir, RUNS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    plan = json.load(f)
  return [r['name'] for r in plan['runs']
          if not os.path.exists(os.path.join(sweep_dir, r['name'], RESULT_FILE))]


def default_label(config: Mapping[str, Any]) -> str:
  """The method, with its options: 'houlsby (size=8)'; 'full'."""
  options = config.get('method_options') or {}
  if config['method'] in ('full', 'head') or not options:
    return config['method']
  return f"{config['method']} ({', '.join(f'{k}={v}' for k, v in sorted(options.items()))})"


def _labels(label_fn: LabelFn, config: Mapping[str, Any]) -> tuple[str, ...]:
  labels = label_fn(config)
  return (labels,) if isinstance(labels, str) else tuple(labels)


def _task_splits(task: str, result: Mapping[str, Any]) -> tuple[str, str | None]:
  """(first validation split, first test split) of a task; registry first, results second."""
  try:
    from adapters_jax.data import get_task  # registered tasks know their split order
    spec = get_task(task)
    return spec.validation_splits[0], spec.test_splits[0] if spec.test_splits else None
  except (KeyError, ValueError, ImportError):
    validation = sorted(result['validation_metrics'])[0]
    tests = sorted(result.get('test_metrics') or {})
    return validation, tests[0] if tests else None


def default_columns(results: Sequence[Mapping[str, Any]]) -> list[Column]:
  """One column per task, in order of first appearance, showing its selection metric."""
  columns, seen = [], set()
  for result in results:
    if result['task'] not in seen:
      seen.add(result['task'])
      columns.append(Column(result['task'], result['task']))
  return columns


def _hparams(config: Mapping[str, Any]) -> str:
  return json.dumps({k: v for k, v in config.items() if k != 'seed'}, sort_keys=True)


def _flatten(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def _describe(chosen: Mapping[str, Any], others: Sequence[Mapping[str, Any]]) -> str:
  """The fields of `chosen` that vary among the candidate configs."""
  flat = _flatten(chosen)
  flats = [_flatten(o) for o in others]
  varying = sorted(k for k in flat if k != 'seed' and any(f.get(k) != flat[k] for f in flats))
  return ', '.join(f'{k}={flat[k]}' for k in varying)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def selection_score(result: Mapping[str, Any]) -> float:
  """The run's model-selection metric on its task's first validation split."""
  split, _ = _task_splits(result['task'], result)
  return float(result['validation_metrics'][split][result['select_metric']])


def summarize(results: Sequence[Mapping[str, Any]], label_fn: LabelFn = default_label,
              columns: Sequence[Column] | None = None,
              paper: Mapping[tuple[str, str], float] | None = None,
              label_order: Sequence[str] = ()) -> list[Row]:
  """Selects hyperparameters per (task, label) on mean validation score and aggregates the seeds.

  Args:
    results: result.json records (see `collect`).
    label_fn: config (the result's `config`) -> method label(s); a run may count for several
      labels (Houlsby's size-64 runs are both 'adapters (64)' and 'adapters (8-256)').
    columns: the table's columns; default one per task.
    paper: {(column name, label): score in percent}.
    label_order: labels in the order the table lists them; others follow in order of appearance.

  Returns:
    One row per column × label that has runs, columns in order, labels in `label_order`.
  """
  columns = list(columns) if columns is not None else default_columns(results)
  paper = paper or {}
  groups: dict[tuple[str, str], dict[str, list[Mapping[str, Any]]]] = {}
  seen_labels: list[str] = []
  for result in results:
    for label in _labels(label_fn, result['config']):
      if label not in seen_labels:
        seen_labels.append(label)
      by_hparams = groups.setdefault((result['task'], label), {})
      by_hparams.setdefault(_hparams(result['config']), []).append(result)

  label_order = [*[lb for lb in label_order if lb in seen_labels],
                 *[lb for lb in seen_labels if lb not in label_order]]
  rows = []
  for column in columns:
    for label in label_order:
      candidates = groups.get((column.task, label))
      if not candidates:
        continue
      means = {key: _mean_std([selection_score(r) for r in runs])[0]
               for key, runs in candidates.items()}
      best_key = max(means, key=lambda k: (means[k], -len(k)))
      runs = sorted(candidates[best_key], key=lambda r: r['config'].get('seed', 0))
      first = runs[0]
      validation_split, test_split = _task_splits(column.task, first)
      validation_split = column.validation_split or validation_split
      test_split = column.test_split or test_split
      metric = column.metric or first['select_metric']
      if test_split and all(test_split in (r.get('test_metrics') or {}) for r in runs):
        split, values = test_split, [r['test_metrics'][test_split][metric] for r in runs]
      else:
        split = validation_split
        values = [r['validation_metrics'][validation_split][metric] for r in runs]
      mean, std = _mean_std([SCALE * v for v in values])
      rows.append(Row(
          column=column.name, task=column.task, label=label, split=split, metric=metric,
          mean=mean, std=std, seeds=len(runs), validation_mean=SCALE * means[best_key],
          trainable_params=int(first['trainable_params']),
          trainable_percent=float(first['trainable_percent']),
          selected=_describe(first['config'], [c[0]['config'] for c in candidates.values()]),
          runs=[os.path.basename(r['workdir']) for r in runs if 'workdir' in r],
          paper=paper.get((column.name, label)),
          wall_time_s=_mean_wall_time(runs)))
  return rows


def _mean_wall_time(runs: Sequence[Mapping[str, Any]]) -> float | None:
  times = [r['wall_time_s'] for r in runs if r.get('wall_time_s') is not None]
  return sum(times) / len(times) if times else None


def time_table(rows: Sequence[Row], paper_seconds: Mapping[str, float], paper_note: str = '') -> str:
  """Per method label, our mean wall time (training and evaluation) beside the paper's train
  time (`paper_seconds`: label -> seconds; `paper_note` says how the paper measured it)."""
  lines = ['| Method | Ours: wall time (s) | Paper: train time (s) | Ours / paper |',
           '|---|---:|---:|---:|']
  for label in dict.fromkeys(row.label for row in rows):
    ours = next((r.wall_time_s for r in rows if r.label == label and r.wall_time_s is not None),
                None)
    theirs = paper_seconds.get(label)
    ratio = None if ours is None or not theirs else ours / theirs
    lines.append(f'| {label} | {_fmt(ours, 0)} | {_fmt(theirs, 0)} | '
                 f'{"—" if ratio is None else f"{ratio:.2f}"} |')
  note = f' Paper: {paper_note}.' if paper_note else ''
  return '\n'.join(['Time per run (ours: result.json `wall_time_s`, training and evaluation).'
                    + note, ''] + lines) + '\n'


def averages(rows: Sequence[Row], columns: Sequence[str]) -> dict[str, float]:
  """Per label, the mean score over `columns`, for labels that have every column."""
  by_label: dict[str, dict[str, float]] = {}
  for row in rows:
    by_label.setdefault(row.label, {})[row.column] = row.mean
  return {label: sum(scores[c] for c in columns) / len(columns)
          for label, scores in by_label.items() if all(c in scores for c in columns)}


def _fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '—'
  return f'{value:+.{digits}f}' if signed else f'{value:.{digits}f}'


def _fmt_percent(percent: float) -> str:
  return f'{percent:.2f}%' if percent >= 1 else f'{percent:.2g}%'


def _fmt_params(count: int) -> str:
  for unit, size in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if count >= size:
      return f'{count / size:.3g}{unit}'
  return str(count)


def markdown_table(rows: Sequence[Row], paper: Mapping[tuple[str, str], float] | None = None,
                   paper_params: Mapping[str, str] | None = None,
                   reference: str | None = None) -> str:
  """The long table (one line per column × label) and, for several columns, the averages.

  `reference`: a label (e.g. 'full'); adds a column with each row's difference to it.
  """
  paper = paper or {}
  paper_params = paper_params or {}
  ref = {row.column: row.mean for row in rows if row.label == reference}
  ref_head = f' Δ vs {reference} |' if reference else ''
  lines = ['| Task | Method | Ours | ± std (seeds) | Split · metric |' + ref_head + ' Paper | Δ | '
           'Trainable (ours) | Trainable (paper) | Validation (selection) | Selected |',
           '|---|---|---:|---:|---|' + ('---:|' if reference else '') +
           '---:|---:|---:|---:|---:|---|']
  for row in rows:
    ref_cell = ''
    if reference:
      base = ref.get(row.column)
      ref_cell = f' {_fmt(None if base is None else row.mean - base, signed=True)} |'
    lines.append(
        f'| {row.column} | {row.label} | {_fmt(row.mean)} | ± {_fmt(row.std)} ({row.seeds}) | '
        f'{row.split} · {row.metric} |{ref_cell} {_fmt(row.paper)} | '
        f'{_fmt(row.diff, signed=True)} | '
        f'{_fmt_params(row.trainable_params)} ({_fmt_percent(row.trainable_percent)}) | '
        f'{paper_params.get(row.label, "—")} | {_fmt(row.validation_mean)} | '
        f'{row.selected or "—"} |')
  columns = list(dict.fromkeys(row.column for row in rows))
  if len(columns) > 1:
    ours = averages(rows, columns)
    labels = list(dict.fromkeys([row.label for row in rows] +
                                [label for column, label in paper if column == 'avg']))
    lines += ['', f'Average over {", ".join(columns)}:', '',
              '| Method | Ours (avg) | Paper (avg) | Δ |', '|---|---:|---:|---:|']
    for label in labels:
      mine, theirs = ours.get(label), paper.get(('avg', label))
      diff = None if mine is None or theirs is None else mine - theirs
      lines.append(f'| {label} | {_fmt(mine)} | {_fmt(theirs)} | {_fmt(diff, signed=True)} |')
  return '\n'.join(lines) + '\n'


CSV_FIELDS = ('column', 'task', 'label', 'split', 'metric', 'mean', 'std', 'seeds',
              'validation_mean', 'paper', 'diff', 'trainable_params', 'trainable_percent',
              'selected', 'runs')


def write_csv(rows: Sequence[Row], path: str) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      record = dataclasses.asdict(row)
      record['diff'] = row.diff
      record['runs'] = ' '.join(row.runs)
      writer.writerow({k: record[k] for k in CSV_FIELDS})


def plot(rows: Sequence[Row], path: str, title: str = '') -> None:
  """Score vs trainable parameters (log x), one point per method label: the single column's
  mean ± std over seeds, or the average over columns when there are several."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  columns = list(dict.fromkeys(row.column for row in rows))
  labels = list(dict.fromkeys(row.label for row in rows))
  ours = averages(rows, columns)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  points = {}
  for label in labels:
    mine = [r for r in rows if r.label == label]
    if label in ours:
      x = sum(r.trainable_params for r in mine) / len(mine)
      points[label] = (x, ours[label], mine[0].std if len(columns) == 1 else None)
  for x, y, err in points.values():
    ax.errorbar([x], [y], yerr=None if err is None else [err], fmt='o', capsize=3)
  ax.set_xscale('log')
  fig.canvas.draw()  # fixes the axis limits, so data -> pixel positions below are final
  placed = []  # pixel boxes (x0, y0, x1, y1) of the labels written so far
  for label, (x, y, _) in points.items():
    px, py = ax.transData.transform((x, y))
    scale = fig.dpi / 72  # pixels per point
    width = (5 * len(label) + 2) * scale  # an 8 pt label, 10 pt high
    for dy in (4, -12, 16, -24, 28, -36):  # first free slot beside the point, in points
      box = (px + 5 * scale, py + dy * scale, px + 5 * scale + width, py + (dy + 10) * scale)
      if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                 for b in placed):
        break
    placed.append(box)
    ax.annotate(label, (x, y), textcoords='offset points', xytext=(5, dy), fontsize=8)
  ax.set_xlabel('trainable parameters')
  metric = f'{rows[0].split} {rows[0].metric}' if len(columns) == 1 else 'average score'
  ax.set_ylabel(f'{metric} (%)')
  ax.set_title(title or ', '.join(columns))
  ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)

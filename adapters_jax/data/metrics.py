"""GLUE metrics in numpy: accuracy, binary F1, Matthews correlation, Pearson, Spearman.

All metrics are computed in float64 on host numpy arrays, after the eval loop has gathered
predictions; they are not meant to run under jit. Degenerate cases follow scikit-learn/scipy:
F1 and Matthews are 0.0 when their denominator is zero; Pearson and Spearman are NaN when either
input is constant (a model that predicts one value has no correlation).

Example:
  spec = get_task('mrpc')
  compute_metrics(spec, logits, labels, mask=example_mask)
  # {'accuracy': 0.84, 'f1': 0.88, 'combined_score': 0.86}
"""

from __future__ import annotations

import numpy as np

from adapters_jax.data.task_registry import TaskSpec


def accuracy(predictions, labels) -> float:
  """Fraction of predictions equal to labels. predictions, labels: int [N]."""
  predictions, labels = _check_pair(predictions, labels)
  return float(np.mean(predictions == labels))


def _confusion(predictions, labels) -> tuple[float, float, float, float]:
  """(tp, tn, fp, fn) for binary labels with positive class 1, as floats."""
  predictions, labels = _check_pair(predictions, labels)
  pred_pos, true_pos = predictions == 1, labels == 1
  tp = float(np.sum(pred_pos & true_pos))
  tn = float(np.sum(~pred_pos & ~true_pos))
  fp = float(np.sum(pred_pos & ~true_pos))
  fn = float(np.sum(~pred_pos & true_pos))
  return tp, tn, fp, fn


def f1_binary(predictions, labels) -> float:
  """F1 of the positive class 1: 2 tp / (2 tp + fp + fn); 0.0 if that is 0 / 0."""
  tp, _, fp, fn = _confusion(predictions, labels)
  denom = 2.0 * tp + fp + fn
  return 0.0 if denom == 0 else 2.0 * tp / denom


def matthews_corrcoef(predictions, labels) -> float:
  """Matthews correlation coefficient, multiclass (Gorodkin's R_K; equals the binary MCC).

  0.0 when the denominator is zero (all predictions or all labels in one class).
  """
  predictions, labels = _check_pair(predictions, labels)
  classes = np.union1d(predictions, labels)
  p = np.searchsorted(classes, predictions)
  t = np.searchsorted(classes, labels)
  k = len(classes)
  confusion = np.zeros((k, k), np.float64)  # [true, predicted]
  np.add.at(confusion, (t, p), 1.0)
  n = confusion.sum()
  correct = np.trace(confusion)
  true_counts = confusion.sum(axis=1)
  pred_counts = confusion.sum(axis=0)
  cov_tp = correct * n - np.dot(true_counts, pred_counts)
  cov_pp = n * n - np.dot(pred_counts, pred_counts)
  cov_tt = n * n - np.dot(true_counts, true_counts)
  denom = np.sqrt(cov_pp * cov_tt)
  return 0.0 if denom == 0 else float(cov_tp / denom)


def pearson(predictions, labels) -> float:
  """Pearson correlation in float64; NaN when either input is constant."""
  x, y = _check_pair(predictions, labels, dtype=np.float64)
  x = x - x.mean()
  y = y - y.mean()
  denom = np.sqrt(np.dot(x, x) * np.dot(y, y))
  if denom == 0:
    return float('nan')
  return float(np.clip(np.dot(x, y) / denom, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given their mean rank (scipy.stats.rankdata 'average')."""
  order = np.argsort(x, kind='stable')
  sorted_x = x[order]
  # Start of each run of equal values in sorted order.
  starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
  ends = np.concatenate([starts[1:], [len(x)]])
  run_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
  ranks_sorted = np.repeat(run_rank, ends - starts)
  ranks = np.empty(len(x), np.float64)
  ranks[order] = ranks_sorted
  return ranks


def spearman(predictions, labels) -> float:
  """Spearman rank correlation (Pearson of average ranks); NaN when either input is constant."""
  x, y = _check_pair(predictions, labels, dtype=np.float64)
  return pearson(_average_ranks(x), _average_ranks(y))


def compute_metrics(spec: TaskSpec, predictions, labels, mask=None) -> dict[str, float]:
  """Computes `spec.metric_names` for a whole evaluation split.

  Args:
    spec: the task.
    predictions: class ids int [N] or logits float [N, num_labels] (argmax is taken) for
      classification; scores float [N] or [N, 1] for regression.
    labels: gold labels [N]: int class ids, or floats for regression.
    mask: optional [N] bool/float; examples where it is 0 (batch padding) are ignored.

  Returns:
    metric name -> value, exactly the keys of `spec.metric_names`. `combined_score` is the mean
    of the task's other metrics (GLUE's per-task score for MRPC, QQP and STS-B).

  Raises:
    ValueError: on shape mismatches, unlabelled examples (label -1, e.g. GLUE test splits) or an
      unknown metric name.
  """
  predictions = np.asarray(predictions)
  labels = np.asarray(labels)
  if mask is not None:
    keep = np.asarray(mask).astype(bool).reshape(-1)
    if keep.shape[0] != predictions.shape[0]:
      raise ValueError(f'mask has {keep.shape[0]} entries, predictions {predictions.shape[0]}.')
    predictions, labels = predictions[keep], labels[keep]
  if spec.is_regression:
    if predictions.ndim == 2 and predictions.shape[1] == 1:
      predictions = predictions[:, 0]
    predictions = predictions.astype(np.float64)
    labels = labels.astype(np.float64)
  else:
    if predictions.ndim == 2:
      predictions = np.argmax(predictions, axis=-1)
    if np.any(labels < 0):
      raise ValueError(
          f'Task {spec.name!r}: labels contain -1 (no gold label); metrics need a labelled split '
          f'such as {spec.validation_splits[0]!r}, not a hidden-label test split.')
  if predictions.size == 0:
    raise ValueError(f'Task {spec.name!r}: no (unmasked) examples to score.')

  values: dict[str, float] = {}
  for name in spec.metric_names:
    if name == 'combined_score':
      continue
    if name not in _METRICS:
      raise ValueError(f'Unknown metric {name!r}; valid: {", ".join(sorted(_METRICS))}, '
                       'combined_score.')
    values[name] = _METRICS[name](predictions, labels)
  if 'combined_score' in spec.metric_names:
    values['combined_score'] = float(np.mean(list(values.values())))
  return {name: values[name] for name in spec.metric_names}


_METRICS = {
    'accuracy': accuracy,
    'f1': f1_binary,
    'matthews': matthews_corrcoef,
    'pearson': pearson,
    'spearman': spearman,
}

METRIC_NAMES: tuple[str, ...] = (*_METRICS, 'combined_score')


def _check_pair(predictions, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
  predictions = np.asarray(predictions, dtype=dtype).reshape(-1)
  labels = np.asarray(labels, dtype=dtype).reshape(-1)
  if predictions.shape != labels.shape:
    raise ValueError(
        f'predictions and labels differ in length: {predictions.shape[0]} vs {labels.shape[0]}.')
  return predictions, labels

"""Metrics against independent references: scipy.stats and confusion-matrix formulas."""

import math

import numpy as np
import pytest
import scipy.stats

from adapters_jax.data import (
    accuracy,
    compute_metrics,
    f1_binary,
    get_task,
    matthews_corrcoef,
    pearson,
    spearman,
)


def _mcc_formula(pred, true):
  tp = sum(p == 1 and t == 1 for p, t in zip(pred, true, strict=True))
  tn = sum(p == 0 and t == 0 for p, t in zip(pred, true, strict=True))
  fp = sum(p == 1 and t == 0 for p, t in zip(pred, true, strict=True))
  fn = sum(p == 0 and t == 1 for p, t in zip(pred, true, strict=True))
  denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def test_binary_metrics_match_hand_formulas():
  pred = [1, 1, 0, 0, 1, 0, 1, 1, 0, 0]
  true = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0]
  # tp=3 fp=2 fn=1 tn=4
  assert accuracy(pred, true) == pytest.approx(7 / 10)
  assert f1_binary(pred, true) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
  assert matthews_corrcoef(pred, true) == pytest.approx((3 * 4 - 2 * 1) / math.sqrt(5 * 4 * 6 * 5))


def test_binary_metrics_random_and_degenerate():
  rng = np.random.default_rng(0)
  for _ in range(20):
    pred = rng.integers(0, 2, 37).tolist()
    true = rng.integers(0, 2, 37).tolist()
    assert matthews_corrcoef(pred, true) == pytest.approx(_mcc_formula(pred, true), abs=1e-12)
  assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0
  assert f1_binary([0, 0], [0, 0]) == 0.0


def test_multiclass_matthews_brute_force():
  # Gorodkin's R_K as the correlation of one-hot matrices, computed directly.
  rng = np.random.default_rng(1)
  pred = rng.integers(0, 3, 50)
  true = rng.integers(0, 3, 50)
  x = np.eye(3)[pred]
  y = np.eye(3)[true]
  xc, yc = x - x.mean(0), y - y.mean(0)
  expected = np.sum(xc * yc) / np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
  assert matthews_corrcoef(pred, true) == pytest.approx(expected, abs=1e-12)


def test_correlations_match_scipy_with_ties():
  rng = np.random.default_rng(2)
  x = rng.normal(size=200)
  y = 0.5 * x + rng.normal(size=200)
  y_ties = np.round(y)  # many ties
  assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
  assert spearman(x, y_ties) == pytest.approx(scipy.stats.spearmanr(x, y_ties)[0], abs=1e-12)
  assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_compute_metrics_glue_keys_and_combined_score():
  logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.0, 1.0]])
  labels = np.array([1, 0, 0, 0, 7])  # the last row is padding, masked out
  mask = np.array([1, 1, 1, 1, 0], np.float32)
  out = compute_metrics(get_task('mrpc'), logits, labels, mask=mask)
  assert list(out) == ['accuracy', 'f1', 'combined_score']
  assert out['accuracy'] == pytest.approx(0.75)
  assert out['f1'] == pytest.approx(2 / 3)
  assert out['combined_score'] == pytest.approx((0.75 + 2 / 3) / 2)

  scores = np.array([[0.5], [1.5], [3.0], [4.2]])
  gold = np.array([0.0, 2.0, 2.5, 5.0])
  out = compute_metrics(get_task('stsb'), scores, gold)
  assert out['pearson'] == pytest.approx(scipy.stats.pearsonr(scores[:, 0], gold)[0])
  assert out['spearman'] == pytest.approx(1.0)
  assert out['combined_score'] == pytest.approx((out['pearson'] + 1.0) / 2)
  assert set(compute_metrics(get_task('cola'), [1, 0], [1, 0])) == {'matthews'}


def test_compute_metrics_rejects_unlabelled_and_mismatched():
  with pytest.raises(ValueError, match='no gold label'):
    compute_metrics(get_task('rte'), [0, 1], [-1, -1])
  with pytest.raises(ValueError, match='differ in length'):
    accuracy([0, 1, 1], [0, 1])

"""Evaluation metrics against values computed by hand on fixed scores and labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.metrics import (
    bootstrap_intervals,
    confusion,
    format_table,
    metrics_with_intervals,
    point_metrics,
    roc_auc,
    roc_curve,
    threshold_for_sensitivity,
)

# positives: 0.9 0.8 0.6 0.4   negatives: 0.7 0.55 0.3 0.2
SCORES = [0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2]
LABELS = [1, 1, 0, 1, 0, 1, 0, 0]


def test_confusion_matrix_at_threshold() -> None:
    # score >= 0.5 flags 0.9 0.8 0.7 0.6 0.55: TP 0.9 0.8 0.6, FP 0.7 0.55, FN 0.4, TN 0.3 0.2
    assert confusion(SCORES, LABELS, 0.5) == {"tp": 3, "tn": 2, "fp": 2, "fn": 1}
    # the threshold itself is flagged (>=)
    assert confusion(SCORES, LABELS, 0.6) == {"tp": 3, "tn": 3, "fp": 1, "fn": 1}


def test_point_metrics_by_hand() -> None:
    m = point_metrics(SCORES, LABELS, 0.5)
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["recall"] == m["sensitivity"]
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m["auc"] == pytest.approx(13 / 16)  # pairs ranked right: 4 + 4 + 3 + 2 of 16
    assert m["threshold"] == 0.5


def test_auc_ties_and_degenerate_cases() -> None:
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    # pos 0.3 vs neg 0.3 counts half; 0.3 > 0.1; 0.8 beats both → 3.5 / 4
    assert roc_auc([0.3, 0.3, 0.8, 0.1], [1, 0, 1, 0]) == pytest.approx(0.875)
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [0, 2])


def test_roc_curve_points() -> None:
    fpr, tpr, thresholds = roc_curve(SCORES, LABELS)
    assert thresholds[0] == np.inf and (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    index = list(thresholds).index(0.6)
    assert (fpr[index], tpr[index]) == (0.25, 0.75)
    assert np.trapezoid(tpr, fpr) == pytest.approx(13 / 16)


def test_threshold_for_target_sensitivity() -> None:
    # positives sorted: 0.9 0.8 0.6 0.4
    assert threshold_for_sensitivity(SCORES, LABELS, 0.75) == 0.6
    assert threshold_for_sensitivity(SCORES, LABELS, 0.95) == 0.4
    assert threshold_for_sensitivity(SCORES, LABELS, 0.5) == 0.8
    assert threshold_for_sensitivity(SCORES, LABELS, 1.0) == 0.4
    for target in (0.5, 0.75, 0.95):
        t = threshold_for_sensitivity(SCORES, LABELS, target)
        assert point_metrics(SCORES, LABELS, t)["sensitivity"] >= target
    with pytest.raises(ValueError):
        threshold_for_sensitivity([0.1], [0], 0.95)


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(200), np.ones(200)].astype(int)
    scores = np.r_[rng.normal(0.3, 0.15, 200), rng.normal(0.7, 0.15, 200)]
    result = metrics_with_intervals(scores, labels, 0.5, n_boot=300, seed=3)
    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc"):
        low, high = result[f"{name}_ci95"]
        assert low <= result[name] <= high, name
        assert 0 < high - low < 0.15, name
    assert result == metrics_with_intervals(scores, labels, 0.5, n_boot=300, seed=3)  # seeded
    # perfectly separated data: every resample has AUC 1
    assert bootstrap_intervals([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 0.5, n_boot=50)["auc"] in ([1.0, 1.0],
                                                                                           [float("nan")] * 2)
    assert "TP=" in format_table(result) and "95% CI" in format_table(result)

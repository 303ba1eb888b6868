"""Binary classification metrics for triage: the study's confusion-matrix table, ROC AUC, bootstrap intervals,
and the operating threshold for a target sensitivity. Flag rule everywhere: ``score >= threshold`` is positive."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

POINT_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")


def _arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(np.int64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return s, y


def confusion(scores: Any, labels: Any, threshold: float) -> dict[str, int]:
    s, y = _arrays(scores, labels)
    predicted = s >= threshold
    return {
        "tp": int(np.sum(predicted & (y == 1))),
        "tn": int(np.sum(~predicted & (y == 0))),
        "fp": int(np.sum(predicted & (y == 0))),
        "fn": int(np.sum(~predicted & (y == 1))),
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties); NaN when a class is absent."""
    s, y = _arrays(scores, labels)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, group, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[group]  # 1-based midranks: tied scores share their mean rank
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending, starting at +inf."""
    s, y = _arrays(scores, labels)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    n_pos, n_neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    tpr = np.array([np.sum((s >= t) & (y == 1)) / n_pos for t in thresholds])
    fpr = np.array([np.sum((s >= t) & (y == 0)) / n_neg for t in thresholds])
    return fpr, tpr, thresholds


def point_metrics(scores: Any, labels: Any, threshold: float) -> dict[str, Any]:
    """n, tp, tn, fp, fn, accuracy, sensitivity (recall), specificity, precision, F1, AUC at ``threshold``."""
    s, y = _arrays(scores, labels)
    c = confusion(s, y, threshold)
    tp, tn, fp, fn = c["tp"], c["tn"], c["fp"], c["fn"]
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {"n": int(s.size), **c, "accuracy": _ratio(tp + tn, s.size), "sensitivity": sensitivity,
            "recall": sensitivity, "specificity": _ratio(tn, tn + fp), "precision": precision, "f1": f1,
            "auc": roc_auc(s, y), "threshold": float(threshold)}


def bootstrap_intervals(scores: Any, labels: Any, threshold: float, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals (resampling images) for each point metric; threshold held fixed."""
    s, y = _arrays(scores, labels)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in POINT_METRICS}
    for _ in range(n_boot):
        idx = rng.integers(0, s.size, s.size)
        m = point_metrics(s[idx], y[idx], threshold)
        for name in POINT_METRICS:
            if not math.isnan(m[name]):
                samples[name].append(m[name])
    alpha = (1.0 - level) / 2.0
    return {name: ([float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))] if v
                   else [float("nan"), float("nan")]) for name, v in samples.items()}


def metrics_with_intervals(scores: Any, labels: Any, threshold: float, n_boot: int = 1000,
                           seed: int = 0) -> dict[str, Any]:
    """Point metrics plus ``<name>_ci95`` = [low, high] beside each one."""
    result = point_metrics(scores, labels, threshold)
    for name, interval in bootstrap_intervals(scores, labels, threshold, n_boot, seed).items():
        result[f"{name}_ci95"] = interval
    result["bootstrap"] = {"resamples": n_boot, "seed": seed, "level": 0.95, "method": "percentile, images"}
    return result


def threshold_for_sensitivity(scores: Any, labels: Any, target: float = 0.95) -> float:
    """The highest threshold whose sensitivity (score >= threshold) is at least ``target``.

    With k positives sorted by score descending, it is the score of the ceil(target*k)-th positive, so as many
    negatives as possible stay below it.
    """
    s, y = _arrays(scores, labels)
    positives = np.sort(s[y == 1])[::-1]
    if positives.size == 0:
        raise ValueError("no positive samples to choose a threshold from")
    if not 0.0 < target <= 1.0:
        raise ValueError("target sensitivity must be in (0, 1]")
    k = max(1, math.ceil(target * positives.size - 1e-9))
    return float(positives[k - 1])


def _number(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"


def format_table(metrics: dict[str, Any]) -> str:
    """The study's table (TP, TN, FP, FN, accuracy, recall, precision) plus specificity, F1, AUC with intervals."""
    lines = [f"n={metrics['n']}  threshold={metrics['threshold']:.4f}",
             f"TP={metrics['tp']}  TN={metrics['tn']}  FP={metrics['fp']}  FN={metrics['fn']}"]
    for name in POINT_METRICS:
        ci = metrics.get(f"{name}_ci95")
        label = "recall (sensitivity)" if name == "sensitivity" else name
        text = f"{label:<22}{_number(metrics.get(name))}"
        if ci:
            text += f"  (95% CI {_number(ci[0])}–{_number(ci[1])})"
        lines.append(text)
    return "\n".join(lines)


def format_sources(per_source: dict[str, dict[str, Any]]) -> str:
    """One line per source folder: images, positives, AUC, sensitivity, specificity, share flagged, mean score."""
    lines = [f"{'source':<28}{'n':>6}{'pos':>6}{'AUC':>8}{'sens':>8}{'spec':>8}{'flagged':>9}{'mean':>8}"]
    for source, entry in per_source.items():
        lines.append(f"{source:<28}{entry['n']:>6}{entry['positive']:>6}{_number(entry['auc']):>8}"
                     f"{_number(entry['sensitivity']):>8}{_number(entry['specificity']):>8}"
                     f"{_number(entry['flagged_fraction']):>9}{_number(entry['mean_score']):>8}")
    return "\n".join(lines)

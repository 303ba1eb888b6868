"""Evaluation of a checkpoint on a labelled image folder: the study's confusion-matrix table plus specificity, F1 and
ROC AUC with 95% bootstrap intervals, PNG plots (confusion matrix, ROC curve, score histograms per class) and
``report.json``. Every image goes through the serving path: display image → ``to_model_input`` → ``Classifier``."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import file_sha256
from model.data import DEFAULT_IGNORED, DEFAULT_NEGATIVE, DEFAULT_POSITIVE, Sample, deduplicate, discover
from model.inference import Classifier
from model.metrics import format_table, metrics_with_intervals, roc_auc, roc_curve
from model.preparation import NotAnalysable, file_display
from model.preprocess import to_model_input


def score_files(classifier: Classifier, paths: Sequence[Path], batch_size: int = 16,
                progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """Scores for the files, through the worker's own path; NaN where there is none, with the worker's reason code
    (a file it would not analyse, e.g. ``LATERAL_VIEW``) or the error (a file that cannot be read)."""
    scores = np.full(len(paths), np.nan)
    reasons = [""] * len(paths)
    errors = [""] * len(paths)
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if pending:
            batch = torch.stack([tensor for _, tensor in pending])
            for (index, _), value in zip(pending, classifier.score(batch), strict=True):
                scores[index] = float(value)
            pending.clear()

    for index, path in enumerate(paths):
        try:
            pending.append((index, to_model_input(file_display(path), classifier.preprocess)))
        except NotAnalysable as exc:
            reasons[index] = exc.reason
        except Exception as exc:  # an unreadable file is reported, not fatal
            errors[index] = f"{type(exc).__name__}: {exc}"
        if len(pending) >= batch_size:
            flush()
        if progress:
            progress(index + 1, len(paths))
    flush()
    return scores, reasons, errors


def _plots(out: Path, scores: np.ndarray, labels: np.ndarray, metrics: dict[str, Any],
           class_names: Sequence[str], title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(4.2, 4))
    matrix = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], [f"pred {class_names[0]}", f"pred {class_names[1]}"])
    ax.set_yticks([0, 1], [f"true {class_names[0]}", f"true {class_names[1]}"])
    ax.set_title(f"{title}\nthreshold {metrics['threshold']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=120)
    plt.close(fig)
    written.append("confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if 0 < labels.sum() < labels.size:
        fpr, tpr, _ = roc_curve(scores, labels)
        ax.plot(fpr, tpr, lw=2, label=f"AUC {metrics['auc']:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    if not math.isnan(metrics["specificity"]) and not math.isnan(metrics["sensitivity"]):
        ax.plot([1 - metrics["specificity"]], [metrics["sensitivity"]], "ro", label="operating point")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc_curve.png", dpi=120)
    plt.close(fig)
    written.append("roc_curve.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    bins = [float(edge) for edge in np.linspace(0, 1, 41)]
    for label, name in enumerate(class_names[:2]):
        ax.hist(scores[labels == label], bins=bins, alpha=0.6, label=f"{name} (n={int(np.sum(labels == label))})")
    ax.axvline(metrics["threshold"], color="r", ls="--", label="threshold")
    ax.set_xlabel("score (positive-class probability)")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "score_histograms.png", dpi=120)
    plt.close(fig)
    written.append("score_histograms.png")
    return written


def discover_sources(data: Path, negative: Sequence[str], positive: Sequence[str], ignored: Sequence[str],
                     by_folder: bool) -> list[Sample]:
    """The labelled images; with ``by_folder`` the data is SOURCE/CLASS/ and each sample's site is its source."""
    if not by_folder:
        return discover(data, negative, positive, ignored)
    samples: list[Sample] = []
    for source in sorted(p for p in Path(data).iterdir() if p.is_dir() and not p.name.startswith(".")):
        samples += [replace(s, site=source.name) for s in discover(source, negative, positive, ignored)]
    if not samples:
        raise FileNotFoundError(f"{data}: no SOURCE/CLASS/ images")
    return samples


def _group_metrics(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, threshold: float) -> dict[str, Any]:
    flagged = scores[mask] >= threshold
    return {"n": int(mask.sum()), "positive": int(labels[mask].sum()), "flagged": int(flagged.sum()),
            "flagged_fraction": float(flagged.mean()) if mask.any() else None,
            "auc": roc_auc(scores[mask], labels[mask]) if len(set(labels[mask])) == 2 else None,
            "sensitivity": float(flagged[labels[mask] == 1].mean()) if (labels[mask] == 1).any() else None,
            "specificity": float(1 - flagged[labels[mask] == 0].mean()) if (labels[mask] == 0).any() else None,
            "mean_score": float(scores[mask].mean()) if mask.any() else None}


def evaluate(data: Path, checkpoint: Path, out: Path, negative: Sequence[str] = DEFAULT_NEGATIVE,
             positive: Sequence[str] = DEFAULT_POSITIVE, threshold: float | None = None, n_boot: int = 1000,
             device: str = "", dedup: bool = True, seed: int = 0, ignored: Sequence[str] = DEFAULT_IGNORED,
             by_folder: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score every labelled image under ``data`` and write ``report.json``, ``scores.csv`` and the plots.

    Files the worker would not analyse (DICOM laterals, non-chest images …) are listed with its reason code and
    left out of the metrics, as the worklist leaves them unscored."""
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = discover_sources(Path(data), negative, positive, ignored, by_folder)
    classifier = Classifier(Path(checkpoint), device)
    dedup_stats: dict[str, int] | None = None
    if dedup:
        samples, dedup_stats = deduplicate(samples)
    scores, reasons, errors = score_files(classifier, [s.path for s in samples], progress=progress)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    ok = ~np.isnan(scores)
    if not ok.any():
        raise ValueError(f"{data}: no image could be scored ({sum(bool(r) for r in reasons)} not analysable, "
                         f"{sum(bool(e) for e in errors)} unreadable)")
    used_threshold = float(classifier.metadata.threshold if threshold is None else threshold)
    metrics = metrics_with_intervals(scores[ok], labels[ok], used_threshold, n_boot=n_boot, seed=seed)
    per_folder = {}
    for folder in sorted({s.folder for s in samples}):
        mask = np.array([s.folder == folder for s in samples]) & ok
        flagged = scores[mask] >= used_threshold
        per_folder[folder] = {"n": int(mask.sum()), "label": int(labels[mask][0]) if mask.any() else None,
                              "flagged": int(flagged.sum()),
                              "flagged_fraction": float(flagged.mean()) if mask.any() else None}
    per_source = ({source: _group_metrics(scores, labels, np.array([s.site == source for s in samples]) & ok,
                                          used_threshold)
                   for source in sorted({s.site for s in samples})} if by_folder else None)
    report: dict[str, Any] = {
        **metrics,
        "threshold": used_threshold,
        "threshold_source": "override" if threshold is not None else "checkpoint",
        "model_sha256": file_sha256(Path(checkpoint)),
        "model_version": classifier.version,
        "model_trained": classifier.metadata.trained,
        "model_path": str(checkpoint),
        "input_size": classifier.preprocess.size,
        "data": str(data),
        "negative_folders": list(negative),
        "positive_folders": list(positive),
        "per_folder": per_folder,
        "per_source": per_source,
        "ignored_folders": list(ignored),
        "not_analysable": [{"path": str(s.path), "reason": r} for s, r in zip(samples, reasons, strict=True) if r],
        "patients": len({s.patient for s in samples}),
        "deduplication": dedup_stats,
        "unreadable": [{"path": str(s.path), "error": e} for s, e in zip(samples, errors, strict=True) if e],
        "seconds": round(time.time() - started, 1),
    }
    title = f"{Path(data).name} · {classifier.version}"
    report["plots"] = _plots(out, scores[ok], labels[ok], report, classifier.metadata.class_names, title)
    (out / "report.json").write_text(json.dumps(_clean(report), indent=2, sort_keys=True))
    (out / "report.txt").write_text(format_table(report) + "\n")
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "source", "folder", "patient", "label", "score", "flag", "not_analysable", "error"])
        for sample, score, reason, error in zip(samples, scores, reasons, errors, strict=True):
            writer.writerow([sample.path, sample.site, sample.folder, sample.patient, sample.label,
                             "" if math.isnan(score) else f"{score:.6f}",
                             "" if math.isnan(score) else int(score >= used_threshold), reason, error])
    return _clean(report)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN → null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value

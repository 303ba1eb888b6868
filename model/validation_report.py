"""Score a training run's own validation split with any checkpoint, so two models are compared on exactly the same
patient-disjoint images: AUC per population and site, the operating point, and the same-class site AUCs that show
shortcut learning. Used to decide whether a new model replaces the shipped one (``cxr-triage validation-report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.checkpoint import load_checkpoint
from model.data import Sample, cached_dataset, deduplicate, discover
from model.inference import pick_device
from model.metrics import metrics_with_intervals, roc_auc, threshold_for_sensitivity
from model.precision import autocast_dtype
from model.train import population_metrics, predict_cache


def validation_samples(run: Path) -> list[Sample]:
    """The run's validation images in its split order, with their sites and populations."""
    config = json.loads((run / "config.json").read_text())
    wanted = json.loads((run / "split.json").read_text())["val"]
    found: dict[str, Sample] = {}
    for root in config["data"]:
        for sample in discover(Path(root), config["negative"], config["positive"]):
            found[str(sample.path)] = sample
    missing = [path for path in wanted if path not in found]
    if missing:
        raise FileNotFoundError(f"{len(missing)} validation images of {run} are gone, e.g. {missing[0]}")
    return [found[path] for path in wanted]


def validation_report(run: Path, checkpoint: Path, threshold: float | None = None, n_boot: int = 1000
                      ) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the validation split of the training run in ``run``."""
    samples = validation_samples(run)
    deduplicated, _ = deduplicate(samples)
    if len(deduplicated) != len(samples):
        raise ValueError(f"{run}: the validation split holds byte-identical copies")
    loaded = load_checkpoint(checkpoint)
    spec = loaded.metadata.preprocess_spec
    device = pick_device()
    cache = cached_dataset(samples, run / "cache" / "val", size=224)
    scores = predict_cache(loaded.network.to(device), cache, spec.size, spec, device,
                           precision=autocast_dtype(device))
    labels = np.array([s.label for s in samples])
    used = loaded.metadata.threshold if threshold is None else threshold
    checks = population_metrics(scores, samples)
    for site, entry in checks["sites"].items():  # sensitivity / specificity per site at the operating point
        for label, name in ((0, "negative"), (1, "positive")):
            chosen = np.array([s.site == site and s.label == label for s in samples])
            if name in entry:
                entry[name]["flagged"] = int((scores[chosen] >= used).sum())
    populations = {}
    for population in sorted({s.population for s in samples}):
        chosen = np.array([s.population == population for s in samples])
        populations[population] = metrics_with_intervals(scores[chosen], labels[chosen], used, n_boot=n_boot)
    return {"model": loaded.metadata.version, "sha256": loaded.sha256, "threshold": used, "run": str(run),
            "populations": populations, "positive_folders": positive_folders(scores, samples, used),
            "sites": checks["sites"], "same_class_site_auc": checks["same_class_site_auc"]}


def positive_folders(scores: np.ndarray, samples: list[Sample], threshold: float, sensitivity: float = 0.90
                     ) -> dict[str, dict[str, Any]]:
    """Each positive class folder (COVID, PNEUMONIA, …) of each population against that population's normals: the
    questions a site asks of a triage flag ("does it catch COVID-19 in adults, and at what cost in normals?"). Also
    the normals' specificity at the threshold that would catch ``sensitivity`` of that folder."""
    result: dict[str, dict[str, Any]] = {}
    for population in sorted({s.population for s in samples}):
        negatives = scores[[s.population == population and s.label == 0 for s in samples]]
        if not len(negatives):
            continue
        for folder in sorted({s.folder for s in samples if s.population == population and s.label == 1}):
            positives = scores[[s.population == population and s.label == 1 and s.folder == folder
                                for s in samples]]
            both = np.concatenate([negatives, positives])
            labels = np.concatenate([np.zeros(len(negatives), int), np.ones(len(positives), int)])
            at_sensitivity = threshold_for_sensitivity(positives, np.ones(len(positives), int), sensitivity)
            result[f"{population} {folder}"] = {
                "n_positive": len(positives), "n_negative": len(negatives), "auc": roc_auc(both, labels),
                "sensitivity": float(np.mean(positives >= threshold)),
                "specificity": float(np.mean(negatives < threshold)),
                "target_sensitivity": sensitivity,
                "specificity_at_target_sensitivity": float(np.mean(negatives < at_sensitivity))}
    return result

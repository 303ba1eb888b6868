"""Training: ResNet50, SGD with momentum, class-weighted cross-entropy, warm-up + cosine learning rate, progressive
resizing, chest-appropriate augmentation, early stopping on validation AUC, resumable state every epoch, and a JSON +
text log of every epoch. The result is one checkpoint (``model.checkpoint``) whose preprocessing is the size it was
validated at, with the operating threshold chosen on validation data for a target sensitivity.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import CheckpointMetadata, save_checkpoint
from model.data import (AugmentSpec, Sample, analysable, augment_batch, cached_dataset, deduplicate, discover,
                        displays_from_cache, patient_split, resize_batch, sampling_weights)
from model.inference import pick_device, positive_probabilities
from model.metrics import metrics_with_intervals, roc_auc, threshold_for_sensitivity
from model.network import ARCHITECTURE, build_network
from model.precision import autocast_dtype, precision_name
from model.preprocess import PreprocessSpec, normalize

log = logging.getLogger(__name__)


def parse_stages(text: str) -> list[tuple[int, float]]:
    """``"128:6,224:1"`` → [(128, 6.0), (224, 1.0)]: epochs per input size (a fraction = part of an epoch)."""
    stages = []
    for part in text.split(","):
        size, _, epochs = part.strip().partition(":")
        stages.append((int(size), float(epochs or 1)))
        if stages[-1][0] < 32 or stages[-1][1] <= 0:
            raise ValueError(f"bad stage {part!r}: size >= 32 and epochs > 0 wanted")
    return stages


@dataclass
class TrainConfig:
    data: list[Path]
    out: Path
    negative: tuple[str, ...] = ("NORMAL",)
    positive: tuple[str, ...] = ("PNEUMONIA",)
    stages: list[tuple[int, float]] = field(default_factory=lambda: [(128, 6.0), (224, 2.0)])
    batch_size: int = 32
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    val_fraction: float = 0.15
    seed: int = 0
    patience: int = 3
    target_sensitivity: float = 0.95
    balance: str = "weights"  # "weights" (class-weighted loss), "sampler" (class-balanced) or "sites" (by site
    # and class, model.data.sampling_weights)
    equalize: bool = False  # histogram equalisation in the model's preprocessing (stored in the checkpoint)
    epoch_images: int = 0  # images per epoch when sampling (0 = the training set's size)
    allow_bf16: bool = True  # bf16 autocast where the CPU has native bf16 (model.precision)
    augment: bool = True
    augmentation: AugmentSpec = field(default_factory=AugmentSpec)
    init_weights: Path | None = None
    device: str = ""
    max_minutes: float | None = None
    output: Path | None = None
    min_auc: float = 0.9
    version: str = ""
    bootstrap: int = 1000
    cache_size: int = 224
    threads: int = 0
    clip_grad_norm: float = 5.0
    zero_init_residual: bool = True
    finish_only: bool = False  # write the checkpoint from the run folder's best epoch so far, train nothing more

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["data"] = [str(p) for p in self.data]
        data["stages"] = [list(s) for s in self.stages]
        return data


def epoch_plan(stages: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """One (size, fraction of an epoch) per epoch."""
    plan: list[tuple[int, float]] = []
    for size, epochs in stages:
        whole = int(epochs)
        plan += [(size, 1.0)] * whole
        if epochs - whole > 1e-6:
            plan.append((size, epochs - whole))
    return plan


def learning_rate(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


class EpochLog:
    """``epochs.jsonl`` (one JSON object per epoch) and ``train.log`` (text) in the run folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def text(self, message: str, echo: bool = True) -> None:
        line = f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} {message}"
        with open(self.folder / "train.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if echo:
            print(line, file=sys.stderr, flush=True)

    def epoch(self, record: dict[str, Any]) -> None:
        with open(self.folder / "epochs.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def _param_groups(network: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in network.named_parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)  # no decay on BN weights and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def zero_init_residual(network: torch.nn.Module) -> None:
    """Start every residual block as the identity (last BN scale 0, Goyal et al. 2017): from-scratch training
    is far more stable in its first steps. Same architecture; only the initial values differ."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for module in network.modules():
        if isinstance(module, Bottleneck):
            torch.nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock):
            torch.nn.init.zeros_(module.bn2.weight)


def load_init_weights(network: torch.nn.Module, path: Path) -> list[str]:
    """Initialise from a torchvision weights file (e.g. resnet50-*.pth or a .safetensors); the head is dropped when
    its shape differs. Returns the names left at their random initialisation."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = network.state_dict()
    usable = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and v.shape == own[k].shape}
    network.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def predict_cache(network: torch.nn.Module, cache: np.ndarray, size: int, spec: PreprocessSpec,
                  device: torch.device, batch_size: int = 64, precision: torch.dtype | None = None) -> np.ndarray:
    """Positive-class probabilities for every cached display image, preprocessed at ``size``."""
    network.eval()
    scores = []
    for start in range(0, len(cache), batch_size):
        displays = displays_from_cache(cache, np.arange(start, min(start + batch_size, len(cache))))
        scores.append(positive_probabilities(network, normalize(resize_batch(displays, size), spec), device,
                                             precision=precision))
    return np.concatenate(scores) if scores else np.zeros(0)


def prepare_data(config: TrainConfig, logger: EpochLog) -> dict[str, Any]:
    samples: list[Sample] = []
    for root in config.data:
        samples += discover(root, config.negative, config.positive)
    samples, dedup = deduplicate(samples)
    samples, refused = analysable(samples)
    if refused:
        logger.text(f"left out {sum(refused.values())} DICOM files the worker would not score: {refused}")
    train, val = patient_split(samples, config.val_fraction, config.seed)
    if not train or not val or len({s.label for s in val}) < 2:
        raise ValueError("the data is too small for a patient-disjoint split with both classes in validation")
    logger.text(f"data: {len(samples)} unique images ({dedup['duplicates_removed']} duplicates removed in "
                f"{dedup['duplicate_groups']} groups); train {len(train)} "
                f"({sum(s.label for s in train)} positive), val {len(val)} ({sum(s.label for s in val)} positive); "
                f"patients train {len({s.patient for s in train})}, val {len({s.patient for s in val})}")
    started = time.time()
    cache_base = config.out / "cache" / "displays"

    def progress(done: int, total: int) -> None:
        if done % 500 == 0 or done == total:
            logger.text(f"decoding {done}/{total}")

    train_cache = cached_dataset(train, cache_base.with_name("train"), config.cache_size, progress)
    val_cache = cached_dataset(val, cache_base.with_name("val"), config.cache_size, progress)
    logger.text(f"decoded inputs cached in {time.time() - started:.1f} s")
    summary = {
        "sources": [str(p) for p in config.data],
        "negative_folders": list(config.negative), "positive_folders": list(config.positive),
        "deduplication": dedup, "not_analysable_left_out": refused,
        "train_images": len(train), "train_positive": sum(s.label for s in train),
        "val_images": len(val), "val_positive": sum(s.label for s in val),
        "train_patients": len({s.patient for s in train}), "val_patients": len({s.patient for s in val}),
        "split": f"patient-disjoint, per site, stratified by patient label, val_fraction={config.val_fraction}, "
                 f"seed={config.seed}",
        "sites": site_counts(train, val),
    }
    (config.out / "split.json").write_text(json.dumps(
        {"train": [str(s.path) for s in train], "val": [str(s.path) for s in val]}, indent=0))
    return {"train": train, "val": val, "train_cache": train_cache, "val_cache": val_cache, "summary": summary}


def site_counts(train: Sequence[Sample], val: Sequence[Sample]) -> dict[str, dict[str, Any]]:
    """Images per site and class in each part of the split (what the model card's data table shows)."""
    counts: dict[str, dict[str, Any]] = {}
    for part, samples in (("train", train), ("val", val)):
        for sample in samples:
            entry = counts.setdefault(sample.site, {"population": sample.population, "train": [0, 0], "val": [0, 0]})
            entry[part][sample.label] += 1
    return dict(sorted(counts.items()))


def population_metrics(scores: np.ndarray, samples: Sequence[Sample]) -> dict[str, Any]:
    """AUC per population and, per site and class, the score distribution: the shortcut check (a site whose
    normals score like another site's positives is being told apart by its hospital, not its lungs)."""
    labels = np.array([s.label for s in samples])
    result: dict[str, Any] = {"populations": {}, "sites": {}}
    for population in sorted({s.population for s in samples}):
        chosen = np.array([s.population == population for s in samples])
        result["populations"][population] = {
            "images": int(chosen.sum()), "positive": int(labels[chosen].sum()),
            "auc": roc_auc(scores[chosen], labels[chosen]) if len(set(labels[chosen])) == 2 else None}
    for site in sorted({s.site for s in samples}):
        chosen = np.array([s.site == site for s in samples])
        entry: dict[str, Any] = {"auc": roc_auc(scores[chosen], labels[chosen])
                                 if len(set(labels[chosen])) == 2 else None}
        for label, name in ((0, "negative"), (1, "positive")):
            picked = scores[chosen & (labels == label)]
            if len(picked):
                entry[name] = {"n": int(len(picked)), "mean": float(picked.mean()),
                               "quartiles": [float(q) for q in np.percentile(picked, [25, 50, 75])]}
        result["sites"][site] = entry
    result["same_class_site_auc"] = same_class_site_auc(scores, samples)
    return result


def same_class_site_auc(scores: np.ndarray, samples: Sequence[Sample], min_images: int = 10) -> dict[str, float]:
    """For each class and each pair of sites with at least ``min_images`` of it: the AUC with which the score
    tells the two sites apart. Near 0.5 is what a model that reads lungs gives; far from it (either way), the
    model is partly reading the hospital."""
    result: dict[str, float] = {}
    for label, name in ((0, "negative"), (1, "positive")):
        groups = {site: scores[[i for i, s in enumerate(samples) if s.site == site and s.label == label]]
                  for site in sorted({s.site for s in samples})}
        groups = {site: values for site, values in groups.items() if len(values) >= min_images}
        names = sorted(groups)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                both = np.concatenate([groups[first], groups[second]])
                which = np.r_[np.ones(len(groups[first])), np.zeros(len(groups[second]))].astype(np.int64)
                result[f"{name}: {first} vs {second}"] = roc_auc(both, which)
    return result


POPULATION_AGES = {"pediatric": [1, 5], "adult": [18, None]}  # years; Kermany: children aged one to five


def validated_population(val: Sequence[Sample]) -> dict[str, Any]:
    """What the checkpoint was validated on, so the worklist can mark a study outside it."""
    populations = sorted({s.population for s in val})
    return {"populations": populations, "age_years": {p: POPULATION_AGES.get(p) for p in populations},
            "views": ["PA", "AP"], "sites": sorted({s.site for s in val})}


def selection_mask(samples: Sequence[Sample]) -> np.ndarray:
    """The validation images that choose the best epoch and the threshold: the adult ones (the population a
    hospital sends) when they hold both classes, else all."""
    adult = np.array([s.population == "adult" for s in samples])
    labels = np.array([s.label for s in samples])
    if adult.any() and len(set(labels[adult])) == 2:
        return adult
    return np.ones(len(samples), dtype=bool)


def selection_score(by_population: dict[str, Any], fallback: float) -> float:
    """What chooses the best epoch: the mean AUC over the populations that hold both classes (adult and
    pediatric), so an epoch that gains on adults by losing children does not win; ``fallback`` (the AUC on the
    selection mask) where fewer than two populations can be scored."""
    aucs = [entry["auc"] for entry in by_population["populations"].values() if entry["auc"] is not None]
    return float(np.mean(aucs)) if len(aucs) >= 2 else fallback


@dataclass(frozen=True)
class BatchProgress:
    """Where a run stands after one training batch, for a progress bar."""

    epoch: int  # 1-based
    epochs: int
    size: int
    batch: int  # 1-based, within the epoch
    batches: int
    loss: float  # mean training loss of the epoch so far
    images_per_s: float


def train(config: TrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_batch: Callable[[BatchProgress], None] | None = None) -> dict[str, Any]:
    """Run (or resume) training; return the summary (also written to ``out/summary.json``). With ``on_batch`` (a
    progress bar) the per-batch lines go to ``train.log`` only."""
    threads = torch.get_num_threads()
    try:
        return _train(config, on_epoch, on_batch)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None,
           on_batch: Callable[[BatchProgress], None] | None) -> dict[str, Any]:
    started_wall = time.time()
    deadline = started_wall + config.max_minutes * 60 if config.max_minutes else None
    config.out.mkdir(parents=True, exist_ok=True)
    logger = EpochLog(config.out)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    data = prepare_data(config, logger)
    train_cache, val_cache = data["train_cache"], data["val_cache"]
    train_labels = np.array([s.label for s in data["train"]], dtype=np.int64)
    val_labels = np.array([s.label for s in data["val"]], dtype=np.int64)

    network = build_network(2)
    if config.zero_init_residual:
        zero_init_residual(network)
    if config.init_weights:
        fresh = load_init_weights(network, config.init_weights)
        logger.text(f"initialised from {config.init_weights}; left random: {fresh}")
    network = network.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(_param_groups(network, config.weight_decay), lr=config.lr,
                                momentum=config.momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    counts = np.bincount(train_labels, minlength=2).astype(np.float64)
    class_weight = (torch.tensor(counts.sum() / (2.0 * np.maximum(counts, 1)), dtype=torch.float32)
                    if config.balance == "weights" else None)
    if class_weight is not None:
        class_weight = class_weight.to(device)
    draw_weights = (torch.from_numpy(sampling_weights(data["train"])) if config.balance == "sites" else
                    torch.tensor(1.0 / counts[train_labels], dtype=torch.float64))
    spec_base = PreprocessSpec(equalize=config.equalize)
    augment = config.augmentation
    precision = autocast_dtype(device, config.allow_bf16)
    selected = selection_mask(data["val"])

    plan = epoch_plan(config.stages)
    epoch_images = config.epoch_images or len(train_labels)
    steps_per_epoch = [max(1, int(round(frac * epoch_images / config.batch_size))) for _, frac in plan]
    total_steps = sum(steps_per_epoch)
    warmup = max(1, int(config.warmup_epochs * epoch_images / config.batch_size))

    state_path = config.out / "last.pt"
    start_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"auc": -1.0}
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state.get("plan") == [list(p) for p in plan]:
            network.load_state_dict(state["network"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, step, history, best = state["epoch"] + 1, state["step"], state["history"], state["best"]
            torch.set_rng_state(state["torch_rng"])
            logger.text(f"resumed after epoch {start_epoch} (best val AUC {best['auc']:.4f})")
        else:
            logger.text("last.pt is from another plan: starting afresh")
    logger.text(f"plan: {[f'{s}px x{f:g}' for s, f in plan]}, {total_steps} steps, batch {config.batch_size}, "
                f"device {device}, {precision_name(precision)}, threads {torch.get_num_threads()}")
    (config.out / "config.json").write_text(json.dumps(config.to_json(), indent=2))

    stop_reason = "completed plan"
    epochs_without_gain = 0
    if history:
        epochs_without_gain = history[-1].get("epochs_without_gain", 0)
    if config.finish_only:
        stop_reason = f"stopped after epoch {start_epoch} of {len(plan)} (finish only)"
        logger.text(stop_reason)
    for epoch in range(start_epoch, len(plan) if not config.finish_only else start_epoch):
        size, fraction = plan[epoch]
        if deadline and history:
            rate = history[-1]["train_images_per_s"] * (history[-1]["size"] / size) ** 2
            needed = steps_per_epoch[epoch] * config.batch_size / rate + history[-1]["val_seconds"] * (size / history[-1]["size"]) ** 2
            if time.time() + needed > deadline:
                stop_reason = f"time budget: epoch {epoch + 1} at {size}px would need ~{needed / 60:.0f} min"
                logger.text(stop_reason)
                break
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        if config.balance in ("sampler", "sites"):
            order = torch.multinomial(draw_weights, steps_per_epoch[epoch] * config.batch_size, True,
                                      generator=generator)
        else:
            order = torch.cat([torch.randperm(len(train_labels), generator=generator)
                               for _ in range(math.ceil(fraction) or 1)])
        order = order.numpy()
        network.train()
        epoch_start = time.time()
        loss_sum, seen = 0.0, 0
        for batch_index in range(steps_per_epoch[epoch]):
            indices = order[batch_index * config.batch_size:(batch_index + 1) * config.batch_size]
            if len(indices) == 0:
                break
            displays = displays_from_cache(train_cache, indices)
            resized = resize_batch(displays, size)
            if config.augment:
                resized = augment_batch(resized, augment, generator)
            inputs = normalize(resized, spec_base).to(device).contiguous(memory_format=torch.channels_last)
            targets = torch.from_numpy(train_labels[indices]).to(device)
            lr = learning_rate(step, total_steps, warmup, config.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
                logits = network(inputs)
                loss = F.cross_entropy(logits.float(), targets, weight=class_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(network.parameters(), config.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += float(loss.detach()) * len(indices)
            seen += len(indices)
            rate = seen / max(time.time() - epoch_start, 1e-9)
            if on_batch:
                on_batch(BatchProgress(epoch + 1, len(plan), size, batch_index + 1, steps_per_epoch[epoch],
                                       loss_sum / seen, rate))
            if (batch_index + 1) % 20 == 0 or batch_index + 1 == steps_per_epoch[epoch]:
                logger.text(f"epoch {epoch + 1}/{len(plan)} {size}px batch {batch_index + 1}/"
                            f"{steps_per_epoch[epoch]} loss {loss_sum / seen:.4f} lr {lr:.4f} "
                            f"{rate:.1f} img/s", echo=on_batch is None)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"loss is not finite at step {step}")
        train_seconds = time.time() - epoch_start
        val_start = time.time()
        scores = predict_cache(network, val_cache, size, spec_base, device, precision=precision)
        val_seconds = time.time() - val_start
        by_population = population_metrics(scores, data["val"])
        auc = roc_auc(scores[selected], val_labels[selected])
        threshold = threshold_for_sensitivity(scores[selected], val_labels[selected], config.target_sensitivity)
        predicted = scores[selected] >= threshold
        specificity = float(np.mean(~predicted[val_labels[selected] == 0]))
        # The checkpoint's input is the last stage's size (the design fixes it at 224), so only epochs at that
        # size compete; smaller sizes are the fast way there.
        score = selection_score(by_population, auc)
        improved = size == plan[-1][0] and score > best.get("score", best["auc"])
        epochs_without_gain = 0 if improved or size != plan[-1][0] else epochs_without_gain + 1
        record = {"epoch": epoch + 1, "size": size, "fraction": fraction, "steps": step, "lr_end": lr,
                  "train_loss": loss_sum / max(seen, 1), "train_images": seen,
                  "train_seconds": round(train_seconds, 1), "train_images_per_s": seen / train_seconds,
                  "val_seconds": round(val_seconds, 1), "val_auc": auc,
                  "val_threshold_at_target": threshold, "val_specificity_at_target": specificity,
                  "val_accuracy_at_0.5": float(np.mean((scores >= 0.5) == (val_labels == 1))),
                  "val_auc_all": roc_auc(scores, val_labels), "val_selection_score": score,
                  "val_by_population": by_population,
                  "improved": improved, "epochs_without_gain": epochs_without_gain,
                  "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        history.append(record)
        logger.epoch(record)
        aucs = ", ".join(f"{name} {entry['auc']:.4f}" for name, entry in by_population["populations"].items()
                         if entry["auc"] is not None)
        logger.text(f"epoch {epoch + 1} done: {size}px loss {record['train_loss']:.4f} val AUC {auc:.4f} ({aucs}) "
                    f"spec@sens{config.target_sensitivity:g} {specificity:.3f} ({train_seconds / 60:.1f}+"
                    f"{val_seconds / 60:.1f} min){' *best*' if improved else ''}")
        np.save(config.out / f"val_scores_epoch{epoch + 1}.npy", scores)
        if improved:
            best = {"auc": auc, "score": score, "epoch": epoch + 1, "size": size}
            torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, config.out / "best.pt")
            np.save(config.out / "best_val_scores.npy", scores)
        torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "step": step, "history": history, "best": best, "plan": [list(p) for p in plan],
                    "torch_rng": torch.get_rng_state()}, state_path.with_suffix(".part"))
        state_path.with_suffix(".part").replace(state_path)
        if on_epoch:
            on_epoch(record)
        if epochs_without_gain >= config.patience:
            stop_reason = f"early stop: no validation AUC gain for {config.patience} epochs"
            logger.text(stop_reason)
            break
    return finish(config, data, history, best, stop_reason, time.time() - started_wall, logger)


def finish(config: TrainConfig, data: dict[str, Any], history: list[dict[str, Any]], best: dict[str, Any],
           stop_reason: str, wall_seconds: float, logger: EpochLog) -> dict[str, Any]:
    """Operating threshold and validation metrics for the best epoch; write the checkpoint when good enough."""
    val_labels = np.array([s.label for s in data["val"]], dtype=np.int64)
    summary: dict[str, Any] = {"stop_reason": stop_reason, "wall_seconds": round(wall_seconds, 1),
                               "history": history, "best": best, "checkpoint": None}
    if best.get("auc", -1) < 0:
        logger.text("no epoch finished: nothing to write")
        return summary
    scores = np.load(config.out / "best_val_scores.npy")
    selected = selection_mask(data["val"])
    threshold = threshold_for_sensitivity(scores[selected], val_labels[selected], config.target_sensitivity)
    metrics = metrics_with_intervals(scores[selected], val_labels[selected], threshold, n_boot=config.bootstrap,
                                     seed=config.seed)
    metrics["target_sensitivity"] = config.target_sensitivity
    metrics["threshold_chosen_on"] = "adult validation" if not selected.all() else "all validation"
    metrics["epoch"] = best["epoch"]
    metrics["populations"] = {}
    for population in sorted({s.population for s in data["val"]}):
        chosen = np.array([s.population == population for s in data["val"]])
        if len(set(val_labels[chosen])) == 2:
            metrics["populations"][population] = metrics_with_intervals(
                scores[chosen], val_labels[chosen], threshold, n_boot=config.bootstrap, seed=config.seed)
    checks = population_metrics(scores, data["val"])
    metrics["shortcut_check"] = {"sites": checks["sites"], "same_class_site_auc": checks["same_class_site_auc"]}
    summary["validation_metrics"] = metrics
    logger.text(f"best epoch {best['epoch']} ({best['size']}px): AUC {metrics['auc']:.4f} "
                f"{metrics['auc_ci95']}, threshold {threshold:.4f} sensitivity {metrics['sensitivity']:.4f} "
                f"specificity {metrics['specificity']:.4f}")
    sizes: dict[int, float] = {}
    for record in history[:best["epoch"]]:
        sizes[record["size"]] = sizes.get(record["size"], 0.0) + record["fraction"]
    recipe = {
        "optimizer": f"SGD momentum {config.momentum}, weight decay {config.weight_decay} (not on BN/bias)",
        "loss": "cross-entropy, " + ("class-weighted" if config.balance == "weights" else "balanced sampling"),
        "lr": f"peak {config.lr}, linear warm-up {config.warmup_epochs} epoch, cosine to 1%",
        "batch_size": config.batch_size,
        "epochs_by_size": {str(k): v for k, v in sizes.items()},
        "augmentation": asdict(config.augmentation) if config.augment else None,
        "horizontal_flip": False, "init": str(config.init_weights) if config.init_weights else "random",
        "seed": config.seed, "stop_reason": stop_reason, "wall_minutes": round(wall_seconds / 60, 1),
        "device": str(pick_device(config.device)),
        "precision": precision_name(autocast_dtype(pick_device(config.device), config.allow_bf16)),
        "sampling": config.balance, "images_per_epoch": config.epoch_images or data["summary"]["train_images"],
        "equalize": config.equalize,
    }
    training_data = {**data["summary"], "recipe": recipe}
    if metrics["auc"] < config.min_auc:
        logger.text(f"validation AUC {metrics['auc']:.4f} < {config.min_auc}: no checkpoint written")
    else:
        network = build_network(2)
        network.load_state_dict(torch.load(config.out / "best.pt", map_location="cpu", weights_only=True))
        size = int(best["size"])
        version = config.version or (f"{ARCHITECTURE}-{datetime.now(timezone.utc).strftime('%Y%m%d')}"
                                     f"-auc{metrics['auc']:.3f}")
        metadata = CheckpointMetadata(
            version=version, trained=True, threshold=float(threshold), input_size=size,
            preprocessing=PreprocessSpec(size=size, equalize=config.equalize).to_dict(), training_data=training_data,
            validation_metrics=_jsonable(metrics), validated_population=validated_population(data["val"]))
        output = config.output or (config.out / "model.safetensors")
        sha = save_checkpoint(network, metadata, output)
        summary["checkpoint"] = {"path": str(output), "sha256": sha, "bytes": output.stat().st_size,
                                 "version": version}
        logger.text(f"checkpoint {output} sha256 {sha} ({output.stat().st_size / 1e6:.1f} MB)")
    (config.out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
    return summary


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import CheckpointMetadata, file_sha256, load_checkpoint, read_metadata, save_checkpoint
from model.data import (
    AugmentSpec,
    Sample,
    analysable,
    augment_batch,
    batch_to_model_input,
    cached_dataset,
    deduplicate,
    discover,
    displays_from_cache,
    patient_split,
    resize_batch,
    sampling_weights,
)
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
    pediatric_share: float | None = None  # with balance "sites": the pediatric share of the draws (None: by size)
    epoch_images: int = 0  # images per epoch when sampling (0 = the training set's size)
    allow_bf16: bool = True  # bf16 autocast where the CPU has native bf16 (model.precision)
    augment: bool = True
    augmentation: AugmentSpec = field(default_factory=AugmentSpec)
    init_weights: Path | None = None
    # Learning without forgetting: on images of ``distill_population``, the loss also pulls the scores towards a
    # teacher checkpoint's (read at the teacher's own input size and preprocessing), so a model trained for adults
    # keeps what the shipped model knows about children.
    teacher: Path | None = None
    distill_weight: float = 1.0
    distill_population: str = "pediatric"
    # An exponential moving average of the weights (parameters and BatchNorm statistics), decay per step; 0 = off.
    # The average is what is validated and written, which smooths the epoch-to-epoch noise of small-batch SGD.
    ema_decay: float = 0.0
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
        line = f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} {message}"
        with open(self.folder / "train.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if echo:
            print(line, file=sys.stderr, flush=True)

    def epoch(self, record: dict[str, Any]) -> None:
        with open(self.folder / "epochs.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def _param_groups(network: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in network.parameters():
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
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
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
        scores.append(positive_probabilities(network, batch_to_model_input(displays, replace(spec, size=size)),
                                             device, precision=precision))
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
    config.out.mkdir(parents=True, exist_ok=True)
    logger = EpochLog(config.out)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    run = TrainingRun(config, prepare_data(config, logger), logger, on_batch)
    run.resume()
    stop_reason = run.run_epochs(started_wall, on_epoch)
    return finish(config, run.data, run.history, run.best, stop_reason, time.time() - started_wall, logger)


def soft_cross_entropy(logits: torch.Tensor, positive_probability: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of two-class ``logits`` against soft targets (the teacher's positive probability): least
    where the student's probabilities equal the teacher's."""
    targets = torch.stack([1 - positive_probability, positive_probability], dim=1)
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


@dataclass(frozen=True)
class Teacher:
    """A trained checkpoint whose scores a new model learns to keep (``TrainConfig.teacher``)."""

    network: torch.nn.Module
    spec: PreprocessSpec
    version: str
    device: torch.device

    @classmethod
    def load(cls, path: Path, device: torch.device) -> Teacher:
        loaded = load_checkpoint(path)
        network = loaded.network.to(device).to(memory_format=torch.channels_last).eval()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        return cls(network, loaded.metadata.preprocess_spec, loaded.metadata.version, device)

    def scores(self, displays: torch.Tensor, precision: torch.dtype | None) -> torch.Tensor:
        """Positive-class probabilities for un-augmented display images, as the teacher reads them."""
        inputs = batch_to_model_input(displays, self.spec).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=precision or torch.float32,
                                             enabled=precision is not None):
            return torch.softmax(self.network(inputs).float(), dim=1)[:, 1]


class TrainingRun:
    """The moving parts of one run (network, optimizer, sampler, plan, position in it), so that resuming, one
    epoch, validating and saving are each a method and the loop that strings them together stays short."""

    def __init__(self, config: TrainConfig, data: dict[str, Any], logger: EpochLog,
                 on_batch: Callable[[BatchProgress], None] | None) -> None:
        self.config, self.data, self.logger, self.on_batch = config, data, logger, on_batch
        self.device = pick_device(config.device)
        self.train_labels = np.array([s.label for s in data["train"]], dtype=np.int64)
        self.val_labels = np.array([s.label for s in data["val"]], dtype=np.int64)
        network = build_network(2)
        if config.zero_init_residual:
            zero_init_residual(network)
        if config.init_weights:
            fresh = load_init_weights(network, config.init_weights)
            logger.text(f"initialised from {config.init_weights}; left random: {fresh}")
        self.network = network.to(self.device).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(_param_groups(self.network, config.weight_decay), lr=config.lr,
                                         momentum=config.momentum)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        counts = np.bincount(self.train_labels, minlength=2).astype(np.float64)
        self.class_weight = (torch.tensor(counts.sum() / (2.0 * np.maximum(counts, 1)), dtype=torch.float32)
                             .to(self.device) if config.balance == "weights" else None)
        shares = {"pediatric": config.pediatric_share} if config.pediatric_share is not None else None
        self.draw_weights = (torch.from_numpy(sampling_weights(data["train"], population_share=shares))
                             if config.balance == "sites" else
                             torch.tensor(1.0 / counts[self.train_labels], dtype=torch.float64))
        self.spec = PreprocessSpec(equalize=config.equalize)
        self.teacher = Teacher.load(config.teacher, self.device) if config.teacher else None
        self.distilled = np.array([s.population == config.distill_population for s in data["train"]])
        if self.teacher:
            logger.text(f"teacher {self.teacher.version} ({self.teacher.spec.size}px) on "
                        f"{int(self.distilled.sum())} {config.distill_population} training images, "
                        f"weight {config.distill_weight:g}")
        average = torch.optim.swa_utils
        self.ema = (average.AveragedModel(self.network, multi_avg_fn=average.get_ema_multi_avg_fn(config.ema_decay),
                                          use_buffers=True) if config.ema_decay else None)
        self.precision = autocast_dtype(self.device, config.allow_bf16)
        self.selected = selection_mask(data["val"])
        self.plan = epoch_plan(config.stages)
        epoch_images = config.epoch_images or len(self.train_labels)
        self.steps_per_epoch = [max(1, int(round(frac * epoch_images / config.batch_size))) for _, frac in self.plan]
        self.total_steps = sum(self.steps_per_epoch)
        self.warmup = max(1, int(config.warmup_epochs * epoch_images / config.batch_size))
        self.state_path = config.out / "last.pt"
        self.start_epoch, self.step = 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"auc": -1.0}
        self.epochs_without_gain = 0
        self._generator = torch.Generator()  # reseeded per epoch in _order

    def resume(self) -> None:
        """Continue from ``last.pt`` when it belongs to the same plan (a changed plan starts afresh)."""
        if self.state_path.is_file():
            state = torch.load(self.state_path, map_location="cpu", weights_only=False)
            if state.get("plan") == [list(p) for p in self.plan]:
                self.network.load_state_dict(state["network"])
                self.optimizer.load_state_dict(state["optimizer"])
                if self.ema is not None and "ema" in state:
                    self.ema.load_state_dict(state["ema"])
                self.start_epoch, self.step = state["epoch"] + 1, state["step"]
                self.history, self.best = state["history"], state["best"]
                torch.set_rng_state(state["torch_rng"])
                self.logger.text(f"resumed after epoch {self.start_epoch} (best val AUC {self.best['auc']:.4f})")
            else:
                self.logger.text("last.pt is from another plan: starting afresh")
        if self.history:
            self.epochs_without_gain = self.history[-1].get("epochs_without_gain", 0)
        self.logger.text(f"plan: {[f'{s}px x{f:g}' for s, f in self.plan]}, {self.total_steps} steps, batch "
                         f"{self.config.batch_size}, device {self.device}, {precision_name(self.precision)}, "
                         f"threads {torch.get_num_threads()}")
        (self.config.out / "config.json").write_text(json.dumps(self.config.to_json(), indent=2))

    def run_epochs(self, started_wall: float, on_epoch: Callable[[dict[str, Any]], None] | None) -> str:
        """Train the rest of the plan; returns why it stopped."""
        config = self.config
        deadline = started_wall + config.max_minutes * 60 if config.max_minutes else None
        if config.finish_only:
            reason = f"stopped after epoch {self.start_epoch} of {len(self.plan)} (finish only)"
            self.logger.text(reason)
            return reason
        for epoch in range(self.start_epoch, len(self.plan)):
            size = self.plan[epoch][0]
            if deadline and self.history and time.time() + self.epoch_seconds(epoch) > deadline:
                reason = (f"time budget: epoch {epoch + 1} at {size}px would need "
                          f"~{self.epoch_seconds(epoch) / 60:.0f} min")
                self.logger.text(reason)
                return reason
            loss, seen, lr, seconds = self.train_epoch(epoch)
            record = self.validate(epoch, loss, seen, lr, seconds)
            self.save(epoch)
            if on_epoch:
                on_epoch(record)
            if self.epochs_without_gain >= config.patience:
                reason = f"early stop: no validation AUC gain for {config.patience} epochs"
                self.logger.text(reason)
                return reason
        return "completed plan"

    def epoch_seconds(self, epoch: int) -> float:
        """How long an epoch will take, from the last one's speed scaled by the pixel count."""
        last, size = self.history[-1], self.plan[epoch][0]
        rate = last["train_images_per_s"] * (last["size"] / size) ** 2
        return (self.steps_per_epoch[epoch] * self.config.batch_size / rate
                + last["val_seconds"] * (size / last["size"]) ** 2)

    def _order(self, epoch: int) -> np.ndarray:
        """Which training images the epoch draws, seeded by the epoch so a resumed run draws the same."""
        config, fraction = self.config, self.plan[epoch][1]
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        if config.balance in ("sampler", "sites"):
            order = torch.multinomial(self.draw_weights, self.steps_per_epoch[epoch] * config.batch_size, True,
                                      generator=generator)
        else:
            order = torch.cat([torch.randperm(len(self.train_labels), generator=generator)
                               for _ in range(math.ceil(fraction) or 1)])
        self._generator = generator  # the augmentations continue the same stream
        return order.numpy()

    def train_epoch(self, epoch: int) -> tuple[float, int, float, float]:
        """One pass over the epoch's images; returns mean loss, images seen, last learning rate, seconds."""
        config, size = self.config, self.plan[epoch][0]
        order = self._order(epoch)
        self.network.train()
        epoch_start = time.time()
        loss_sum, seen, lr = 0.0, 0, 0.0
        for batch_index in range(self.steps_per_epoch[epoch]):
            indices = order[batch_index * config.batch_size:(batch_index + 1) * config.batch_size]
            if len(indices) == 0:
                break
            lr = learning_rate(self.step, self.total_steps, self.warmup, config.lr)
            loss = self._train_batch(indices, size, lr)
            self.step += 1
            loss_sum += loss * len(indices)
            seen += len(indices)
            rate = seen / max(time.time() - epoch_start, 1e-9)
            if self.on_batch:
                self.on_batch(BatchProgress(epoch + 1, len(self.plan), size, batch_index + 1,
                                            self.steps_per_epoch[epoch], loss_sum / seen, rate))
            if (batch_index + 1) % 20 == 0 or batch_index + 1 == self.steps_per_epoch[epoch]:
                self.logger.text(f"epoch {epoch + 1}/{len(self.plan)} {size}px batch {batch_index + 1}/"
                                 f"{self.steps_per_epoch[epoch]} loss {loss_sum / seen:.4f} lr {lr:.4f} "
                                 f"{rate:.1f} img/s", echo=self.on_batch is None)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"loss is not finite at step {self.step}")
        return loss_sum / max(seen, 1), seen, lr, time.time() - epoch_start

    def _train_batch(self, indices: np.ndarray, size: int, lr: float) -> float:
        config = self.config
        displays = displays_from_cache(self.data["train_cache"], indices)
        resized = resize_batch(displays, size)
        distilled = self.distilled[indices]
        teacher_scores = (self.teacher.scores(displays[torch.from_numpy(distilled)], self.precision)
                          if self.teacher is not None and distilled.any() else None)
        if config.augment:
            resized = augment_batch(resized, config.augmentation, self._generator)
        inputs = normalize(resized, self.spec).to(self.device).contiguous(memory_format=torch.channels_last)
        targets = torch.from_numpy(self.train_labels[indices]).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.precision or torch.float32,
                            enabled=self.precision is not None):
            logits = self.network(inputs)
            loss = F.cross_entropy(logits.float(), targets, weight=self.class_weight)
            if teacher_scores is not None:
                taught = logits.float()[torch.from_numpy(distilled).to(self.device)]
                loss = loss + config.distill_weight * float(distilled.mean()) * soft_cross_entropy(taught,
                                                                                                 teacher_scores)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if config.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.network)
        return float(loss.detach())

    def validate(self, epoch: int, loss: float, seen: int, lr: float, train_seconds: float) -> dict[str, Any]:
        """Score the validation images, log the epoch and keep it as the best when it is."""
        config, (size, fraction) = self.config, self.plan[epoch]
        val_start = time.time()
        scores = predict_cache(self.validated_network, self.data["val_cache"], size, self.spec, self.device,
                               precision=self.precision)
        raw_auc = None
        if self.ema is not None:  # the raw weights too, so the log shows what the average adds
            raw = predict_cache(self.network, self.data["val_cache"], size, self.spec, self.device,
                                precision=self.precision)
            raw_auc = {name: entry["auc"]
                       for name, entry in population_metrics(raw, self.data["val"])["populations"].items()}
        val_seconds = time.time() - val_start
        by_population = population_metrics(scores, self.data["val"])
        selected, labels = scores[self.selected], self.val_labels[self.selected]
        auc = roc_auc(selected, labels)
        threshold = threshold_for_sensitivity(selected, labels, config.target_sensitivity)
        specificity = float(np.mean(~(selected >= threshold)[labels == 0]))
        # The checkpoint's input is the last stage's size (the design fixes it at 224), so only epochs at that
        # size compete; smaller sizes are the fast way there.
        final_size = size == self.plan[-1][0]
        score = selection_score(by_population, auc)
        improved = final_size and score > self.best.get("score", self.best["auc"])
        self.epochs_without_gain = 0 if improved or not final_size else self.epochs_without_gain + 1
        record = {"epoch": epoch + 1, "size": size, "fraction": fraction, "steps": self.step, "lr_end": lr,
                  "train_loss": loss, "train_images": seen,
                  "train_seconds": round(train_seconds, 1), "train_images_per_s": seen / train_seconds,
                  "val_seconds": round(val_seconds, 1), "val_auc": auc,
                  "val_threshold_at_target": threshold, "val_specificity_at_target": specificity,
                  "val_accuracy_at_0.5": float(np.mean((scores >= 0.5) == (self.val_labels == 1))),
                  "val_auc_all": roc_auc(scores, self.val_labels), "val_selection_score": score,
                  "val_by_population": by_population,
                  "weights": "ema" if self.ema is not None else "raw", "val_auc_raw_by_population": raw_auc,
                  "improved": improved, "epochs_without_gain": self.epochs_without_gain,
                  "time_utc": datetime.now(UTC).isoformat(timespec="seconds")}
        self.history.append(record)
        self.logger.epoch(record)
        aucs = ", ".join(f"{name} {entry['auc']:.4f}" for name, entry in by_population["populations"].items()
                         if entry["auc"] is not None)
        if raw_auc:
            aucs += "; raw weights " + ", ".join(f"{name} {value:.4f}" for name, value in raw_auc.items()
                                                  if value is not None)
        self.logger.text(f"epoch {epoch + 1} done: {size}px loss {loss:.4f} val AUC {auc:.4f} ({aucs}) "
                         f"spec@sens{config.target_sensitivity:g} {specificity:.3f} ({train_seconds / 60:.1f}+"
                         f"{val_seconds / 60:.1f} min){' *best*' if improved else ''}")
        np.save(config.out / f"val_scores_epoch{epoch + 1}.npy", scores)
        if improved:
            self.best = {"auc": auc, "score": score, "epoch": epoch + 1, "size": size}
            torch.save({k: v.detach().cpu() for k, v in self.validated_network.state_dict().items()},
                       config.out / "best.pt")
            np.save(config.out / "best_val_scores.npy", scores)
        return record

    @property
    def validated_network(self) -> torch.nn.Module:
        """What is validated and written: the weight average when there is one, else the network itself."""
        return self.ema.module if self.ema is not None else self.network

    def save(self, epoch: int) -> None:
        """The resumable state after ``epoch`` (0-based), written atomically."""
        part = self.state_path.with_suffix(".part")
        torch.save({"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "epoch": epoch, "step": self.step, "history": self.history, "best": self.best,
                    "plan": [list(p) for p in self.plan], "torch_rng": torch.get_rng_state(),
                    **({"ema": self.ema.state_dict()} if self.ema is not None else {})}, part)
        part.replace(self.state_path)


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
        # the whole run's epochs (training + validation), across resumed legs; wall_minutes is this process's
        "epoch_minutes": round(sum(r["train_seconds"] + r["val_seconds"] for r in history) / 60, 1),
        "device": str(pick_device(config.device)),
        "precision": precision_name(autocast_dtype(pick_device(config.device), config.allow_bf16)),
        "sampling": config.balance, "images_per_epoch": config.epoch_images or data["summary"]["train_images"],
        "equalize": config.equalize, "pediatric_share": config.pediatric_share,
        "weight_average": f"EMA, decay {config.ema_decay} per step" if config.ema_decay else None,
        "teacher": ({"version": read_metadata(config.teacher).version, "sha256": file_sha256(config.teacher),
                     "weight": config.distill_weight, "population": config.distill_population}
                    if config.teacher else None),
    }
    training_data = {**data["summary"], "recipe": recipe}
    if metrics["auc"] < config.min_auc:
        logger.text(f"validation AUC {metrics['auc']:.4f} < {config.min_auc}: no checkpoint written")
    else:
        network = build_network(2)
        network.load_state_dict(torch.load(config.out / "best.pt", map_location="cpu", weights_only=True))
        size = int(best["size"])
        version = config.version or (f"{ARCHITECTURE}-{datetime.now(UTC).strftime('%Y%m%d')}"
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


"""Training data: find labelled images, drop byte-identical duplicates, split by patient, decode into a cache.

Images come from class folders (``NORMAL/``, ``PNEUMONIA/``, optionally ``COVID/`` …) of PNG, JPEG or DICOM.
Every file becomes a display image through ``model.preparation.file_display``, the worker's own path (DICOM the worker
would refuse is left out); PNG/JPEG become grayscale [0, 1].
The cache holds display images at ``cache_size`` (uint8); ``batch_to_model_input`` is the batched twin of
``model.preprocess.to_model_input``, built from the same ``stretch`` and ``normalize`` (a test proves them equal).
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.folders import DEFAULT_IGNORED, DEFAULT_NEGATIVE, DEFAULT_POSITIVE, UnmappedFolderError, unmapped_folders
from model.preprocess import PreprocessSpec, normalize, stretch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}
__all__ = ["DEFAULT_IGNORED", "DEFAULT_NEGATIVE", "DEFAULT_POSITIVE", "UnmappedFolderError"]  # re-exported


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1 = positive class
    patient: str
    folder: str
    site: str = ""  # the hospital / collection the pixels come from: the unit of shortcut checks and balancing
    population: str = "adult"  # "adult" or "pediatric": validation reports each separately


# Data-set knowledge that file names cannot carry. Roots whose folder name starts with one of PEDIATRIC_ROOTS hold
# children's films; everything else is adult. SITE_OF maps (root, manifest source, class folder) to the hospital
# the pixels come from: adult-cxr's "radiography-db" normals are NIH ChestX-ray14 films (RSNA "Normal" reads) while
# its COVID films are BIMCV's, so the two must not count as one site.
PEDIATRIC_ROOTS = ("kermany",)
SITE_OF = {
    ("adult-cxr", "radiography-db", "NORMAL"): "nih",
    ("adult-cxr", "radiography-db", "COVID"): "bimcv",
    ("nih-adult", "", "NORMAL"): "nih",
    ("nih-adult", "", "PNEUMONIA"): "nih",
}


def population_of(root: Path) -> str:
    return "pediatric" if Path(root).name.lower().startswith(PEDIATRIC_ROOTS) else "adult"


def manifest_rows(root: Path) -> dict[str, dict[str, str]]:
    """``root/MANIFEST.csv`` rows by path relative to the root (adult-cxr and nih-adult have one), else empty."""
    manifest = Path(root) / "MANIFEST.csv"
    if not manifest.is_file():
        return {}
    with open(manifest, newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle) if row.get("path")}


# --- patients -------------------------------------------------------------------------------------------------

_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^(?:NORMAL2-)?IM-(\d+)-\d+", re.IGNORECASE)


def patient_from_name(name: str, folder: str = "") -> str:
    """The patient a Kermany file name carries (``personN_…``; ``IM-XXXX-YYYY`` and ``NORMAL2-IM-XXXX-YYYY``: XXXX).

    Names that carry no patient become their own patient (the file stem), which can only make a split stricter.
    """
    stem = Path(name).stem
    match = _PERSON.match(stem)
    if match:
        return match.group(1).lower()
    match = _IM.match(stem)
    if match:
        return f"im-{int(match.group(1))}"
    return f"file:{folder}/{stem}"


def covid_patients(root: Path) -> dict[str, str]:
    """covid-ieee8023: file name in the folder → ``cohen:<patientid>`` (via MANIFEST.csv's source file name)."""
    root = Path(root)
    metadata = root / "metadata.csv"
    manifest = root.parent / "MANIFEST.csv"
    if not metadata.is_file():
        return {}
    by_source: dict[str, str] = {}
    with open(metadata, newline="", encoding="utf-8", errors="replace") as handle:
        for row in csv.DictReader(handle):
            if row.get("filename"):
                by_source[row["filename"]] = f"cohen:{row.get('patientid', '').strip()}"
    result: dict[str, str] = {}
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                match = re.search(r"source file (.+?), ", row.get("source", ""))
                if match and match.group(1) in by_source:
                    result[Path(row["path"]).name] = by_source[match.group(1)]
    for name, patient in by_source.items():  # copies that kept their source names
        result.setdefault(name, patient)
    return result


# --- discovery ------------------------------------------------------------------------------------------------

def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def discover(root: Path, negative: Sequence[str] = DEFAULT_NEGATIVE,
             positive: Sequence[str] = DEFAULT_POSITIVE, ignored: Sequence[str] = DEFAULT_IGNORED) -> list[Sample]:
    """Every image under ``root/<class folder>/`` (recursively), labelled by its folder; sorted by path.

    A folder that is neither a class nor ignored stops with UnmappedFolderError naming it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    unknown = unmapped_folders(root, negative, positive, ignored)
    if unknown:
        raise UnmappedFolderError(
            f"{root}: folder(s) {', '.join(unknown)} are neither negative ({', '.join(negative)}), positive "
            f"({', '.join(positive)}) nor ignored ({', '.join(ignored)}); map them with --positive-folder / "
            f"--negative-folder, ignore them with --ignore-folder, or use --by-folder for SOURCE/CLASS/ data")
    patients = covid_patients(root)
    rows = manifest_rows(root)
    population = population_of(root)
    samples: list[Sample] = []
    for label, folders in ((0, negative), (1, positive)):
        for folder in folders:
            base = root / folder
            if not base.is_dir():
                continue
            for path in sorted(base.rglob("*")):
                if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                    continue
                row = rows.get(path.relative_to(root).as_posix(), {})
                group = row.get("group") or row.get("patient")
                patient = (f"{root.name}:{group}" if group else
                           patients.get(path.name) or patient_from_name(path.name, folder))
                source = row.get("source", "")
                site = SITE_OF.get((root.name, source, folder), f"{root.name}:{source}" if source else root.name)
                samples.append(Sample(path=path, label=label, patient=patient, folder=folder, site=site,
                                      population=population))
    if not samples:
        raise FileNotFoundError(f"{root}: no images in {', '.join([*negative, *positive])}")
    return sorted(samples, key=lambda s: str(s.path))


def deduplicate(samples: Iterable[Sample]) -> tuple[list[Sample], dict[str, int]]:
    """Keep the first of each group of byte-identical files; drop groups whose copies disagree on the label.

    Copies of one image under different patient names join their patients (kept sample takes the first name), and
    the returned stats say how many were removed.
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[file_digest(sample.path)].append(sample)
    kept: list[Sample] = []
    stats = {"files": 0, "duplicate_groups": 0, "duplicates_removed": 0, "conflicting_groups_dropped": 0}
    for members in groups.values():
        stats["files"] += len(members)
        if len(members) > 1:
            stats["duplicate_groups"] += 1
            if len({m.label for m in members}) > 1:
                stats["conflicting_groups_dropped"] += 1
                stats["duplicates_removed"] += len(members)
                continue
            stats["duplicates_removed"] += len(members) - 1
        kept.append(members[0])
    return sorted(kept, key=lambda s: str(s.path)), stats


def patient_split(samples: Sequence[Sample], val_fraction: float = 0.15,
                  seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Patient-disjoint split, stratified by site and by the patient's label (a patient with any positive image is
    positive). Each site is split on its own, so adding a site leaves the other sites' validation images as they
    were (a single-site data set splits exactly as before sites existed)."""
    by_site: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_site[sample.site].append(sample)
    site_of_patient: dict[str, str] = {}
    for sample in samples:  # a patient seen at two sites is split with the first one
        site_of_patient.setdefault(sample.patient, sample.site)
    train: list[Sample] = []
    val: list[Sample] = []
    for site in sorted(by_site):
        members = [s for s in samples if site_of_patient[s.patient] == site]
        site_train, site_val = _split_one(members, val_fraction, seed)
        train += site_train
        val += site_val
    key = lambda s: str(s.path)  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key)


def _split_one(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_patient[sample.patient].append(sample)
    rng = random.Random(seed)
    val_patients: set[str] = set()
    for label in (0, 1):
        group = sorted(p for p, members in by_patient.items() if max(m.label for m in members) == label)
        rng.shuffle(group)
        target = round(val_fraction * sum(len(by_patient[p]) for p in group))
        count = 0
        for patient in group:
            if count >= target:
                break
            val_patients.add(patient)
            count += len(by_patient[patient])
    train = [s for s in samples if s.patient not in val_patients]
    val = [s for s in samples if s.patient in val_patients]
    return train, val


def sampling_weights(samples: Sequence[Sample], min_class_images: int = 50,
                     population_share: dict[str, float] | None = None) -> np.ndarray:
    """Per-image sampling probabilities that take the hospital out of the label.

    Each site gets a share proportional to the square root of its size (small sites are heard, big ones do not
    drown them); inside a site that has at least ``min_class_images`` of each class, the classes get equal halves,
    so "looks like this hospital" predicts nothing about the label there (NIH: 4,400 normals against 238
    pneumonias would otherwise teach "NIH-looking means normal"). Sites with one class keep it as it is.
    ``population_share`` (e.g. ``{"pediatric": 0.4}``) then rescales so that each named population gets that share
    of the draws, the others sharing the rest as before: it moves the balance between children and adults without
    touching the balance inside each.
    """
    by_site: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        by_site[sample.site].append(index)
    weights = np.zeros(len(samples), dtype=np.float64)
    for members in by_site.values():
        share = np.sqrt(len(members))
        labels = np.array([samples[i].label for i in members])
        counts = np.bincount(labels, minlength=2)
        if counts.min() >= min_class_images:
            for label in (0, 1):
                chosen = [i for i, lab in zip(members, labels, strict=True) if lab == label]
                weights[chosen] = share / 2 / len(chosen)
        else:
            weights[members] = share / len(members)
    weights /= weights.sum()
    if population_share:
        populations = np.array([s.population for s in samples])
        fixed = {name: share for name, share in population_share.items() if (populations == name).any()}
        if not 0 <= sum(fixed.values()) < 1:
            raise ValueError(f"population shares must add up to less than 1: {population_share}")
        rest = ~np.isin(populations, list(fixed))
        for name, share in fixed.items():
            chosen = populations == name
            weights[chosen] *= share / weights[chosen].sum()
        if rest.any():
            weights[rest] *= (1 - sum(fixed.values())) / weights[rest].sum()
    return weights / weights.sum()


# --- decoding -------------------------------------------------------------------------------------------------

def load_display(path: Path) -> np.ndarray:
    """The display image the worker would make (``model.preparation.file_display``); NotAnalysable where the
    worker would refuse the file."""
    from model.preparation import file_display

    return file_display(path)


def analysable(samples: Sequence[Sample]) -> tuple[list[Sample], dict[str, int]]:
    """Drop DICOM files the worker would not score (lateral, not chest, no pixels …), counted by reason, so
    training learns only from what serving would give it. PNG and JPEG are taken as they are."""
    from model.preparation import NotAnalysable, file_display, is_dicom

    kept: list[Sample] = []
    dropped: dict[str, int] = defaultdict(int)
    for sample in samples:
        if is_dicom(sample.path):
            try:
                file_display(sample.path)
            except NotAnalysable as exc:
                dropped[exc.reason] += 1
                continue
        kept.append(sample)
    return kept, dict(dropped)


def resize_display(display: np.ndarray, size: int) -> np.ndarray:
    """The stretch of ``to_model_input`` (``model.preprocess.stretch``), on the [0, 1] display image."""
    if display.shape == (size, size):
        return display.astype(np.float32, copy=False)
    image = torch.from_numpy(np.ascontiguousarray(display, dtype=np.float32))[None, None]
    return stretch(image, size)[0, 0].numpy()


def build_cache(samples: Sequence[Sample], size: int = 224,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, size, size) uint8 display images (8-bit sources are stored exactly)."""
    cache = np.empty((len(samples), size, size), dtype=np.uint8)
    for index, sample in enumerate(samples):
        display = resize_display(load_display(sample.path), size)
        cache[index] = np.clip(np.rint(display * 255.0), 0, 255).astype(np.uint8)
        if progress:
            progress(index + 1, len(samples))
    return cache


def cached_dataset(samples: Sequence[Sample], cache_file: Path, size: int = 224,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Decode once, keep the uint8 cache on disk keyed by the file list, reuse it on the next run (resume)."""
    key = hashlib.sha256("\n".join(f"{s.path}|{s.label}" for s in samples).encode()).hexdigest()[:16]
    cache_file = Path(cache_file)
    path = cache_file.with_name(f"{cache_file.stem}-{size}-{key}.npy")
    if path.is_file():
        return np.load(path, mmap_mode=None)
    cache = build_cache(samples, size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.npy")
    np.save(tmp, cache)
    tmp.replace(path)
    return cache


# --- batched preprocessing (the twin of to_model_input) -----------------------------------------------------------

def displays_from_cache(cache: np.ndarray, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
    """(N, H, W) float32 display images in [0, 1] from the uint8 cache."""
    return torch.from_numpy(cache[np.asarray(indices)]).float().div_(255.0)


def resize_batch(displays: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) → (N, 1, size, size) with ``model.preprocess.stretch`` (augmentation comes after it)."""
    return stretch(displays[:, None], size)


def batch_to_model_input(displays: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Batched ``to_model_input``: identical per image (tests/test_training.py checks it)."""
    return normalize(resize_batch(displays, spec.size), spec)


# --- augmentation ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentSpec:
    """Chest-appropriate augmentation. No horizontal flip: the heart is on the left, and a flipped film is a
    different (dextrocardia-like) anatomy plus mirrored side markers, so flipping teaches the wrong invariance."""

    rotation_deg: float = 7.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.06
    brightness: float = 0.08
    contrast: tuple[float, float] = (0.8, 1.2)
    gamma: tuple[float, float] = (0.8, 1.25)
    # Cues that tell hospitals apart rather than lungs: sharpness (one source was squashed to 224 px before we got
    # it) and what lies at the edges (collimation, burnt-in text, markers).
    blur_probability: float = 0.5
    blur_scale: tuple[float, float] = (0.4, 1.0)  # resample down to this share of the size and back up
    border_probability: float = 0.5
    border_max: float = 0.12  # each edge blanked over up to this share of the side


def augment_batch(resized: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Random affine (rotation, scale, translation; border pixels repeated) then brightness/contrast/gamma,
    on (N, 1, S, S) display images in [0, 1]; returns images in [0, 1]."""
    n = resized.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-spec.rotation_deg, spec.rotation_deg) * (torch.pi / 180.0)
    scale = uniform(*spec.scale)
    tx, ty = uniform(-spec.translate, spec.translate) * 2, uniform(-spec.translate, spec.translate) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(resized.shape), align_corners=False)
    out = F.grid_sample(resized, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = torch.exp(uniform(float(np.log(spec.gamma[0])), float(np.log(spec.gamma[1]))))[:, None, None, None]
    out = out.clamp(1e-6, 1.0) ** gamma
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(*spec.contrast)[:, None, None, None]
    brightness = uniform(-spec.brightness, spec.brightness)[:, None, None, None]
    out = ((out - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)
    return _blank_borders(_soften(out, spec, generator), spec, generator)


def _soften(images: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Resample a random subset down and back up, so sharpness stops telling one source from another."""
    size = images.shape[-1]
    chosen = torch.rand(images.shape[0], generator=generator) < spec.blur_probability
    if not chosen.any():
        return images
    low, high = spec.blur_scale
    small = max(8, int(size * (low + (high - low) * float(torch.rand(1, generator=generator)))))
    softened = F.interpolate(F.interpolate(images[chosen], size=(small, small), mode="bilinear", antialias=True,
                                           align_corners=False),
                             size=(size, size), mode="bilinear", align_corners=False)
    images = images.clone()
    images[chosen] = softened.clamp_(0.0, 1.0)
    return images


def _blank_borders(images: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Set random-width edge strips of a random subset to black, as collimation does, so the content of the edges
    (labels, markers, a hospital's framing) cannot decide."""
    n, size = images.shape[0], images.shape[-1]
    widths = (torch.rand(n, 4, generator=generator) * spec.border_max * size).long()
    chosen = torch.rand(n, generator=generator) < spec.border_probability
    rows = torch.arange(size)
    for index in torch.nonzero(chosen).flatten().tolist():
        top, bottom, left, right = widths[index].tolist()
        keep_rows = (rows >= top) & (rows < size - bottom)
        keep_cols = (rows >= left) & (rows < size - right)
        images[index, :, ~keep_rows, :] = 0.0
        images[index, :, :, ~keep_cols] = 0.0
    return images

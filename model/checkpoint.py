"""The checkpoint: one safetensors file, weights plus the metadata needed to use them; its sha256 is the identity.

Metadata lives under one safetensors metadata key as JSON, so any safetensors reader can show it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.network import ARCHITECTURE, build_network
from model.preprocess import PreprocessSpec

METADATA_KEY = "cxr_triage"
FORMAT_VERSION = 1
UNTRAINED_SEED = 0
UNTRAINED_VERSION = "untrained-resnet50-seed0"
REQUIRED_KEYS = ("format", "architecture", "class_names", "positive_class", "input_size", "preprocessing",
                 "threshold", "version", "trained")


class CheckpointError(ValueError):
    """The file is not a usable cxr-triage checkpoint; the message says exactly why."""


@dataclass(frozen=True)
class CheckpointMetadata:
    """What a checkpoint says about itself (architecture, classes, preprocessing, threshold, provenance)."""

    version: str
    trained: bool
    threshold: float = 0.5
    architecture: str = ARCHITECTURE
    class_names: tuple[str, ...] = ("normal", "pneumonia")
    positive_class: int = 1
    input_size: int = 224
    preprocessing: dict[str, Any] = field(default_factory=lambda: PreprocessSpec().to_dict())
    training_data: dict[str, Any] = field(default_factory=dict)
    validation_metrics: dict[str, Any] = field(default_factory=dict)
    # populations, age range (years) and views validated on; empty for older checkpoints (nothing is known)
    validated_population: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocessing)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: Path) -> CheckpointMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: metadata is not valid JSON ({exc})") from exc
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise CheckpointError(f"{source}: metadata lacks {', '.join(missing)}")
        if data["format"] != FORMAT_VERSION:
            raise CheckpointError(f"{source}: checkpoint format {data['format']} is not {FORMAT_VERSION}")
        if data["architecture"] != ARCHITECTURE:
            raise CheckpointError(f"{source}: architecture {data['architecture']!r} is not {ARCHITECTURE!r}")
        if not 0 <= int(data["positive_class"]) < len(data["class_names"]):
            raise CheckpointError(f"{source}: positive_class out of range of class_names")
        if not 0.0 <= float(data["threshold"]) <= 1.0:
            raise CheckpointError(f"{source}: threshold {data['threshold']} is not within [0, 1]")
        known = set(cls.__dataclass_fields__)
        data["class_names"] = tuple(data["class_names"])
        try:
            metadata = cls(**{key: value for key, value in data.items() if key in known})
            _ = metadata.preprocess_spec  # validates the preprocessing spec
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{source}: bad metadata ({exc})") from exc
        return metadata


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(network: torch.nn.Module, metadata: CheckpointMetadata, path: Path,
                    dtype: torch.dtype = torch.float16) -> str:
    """Write weights (fp16 by default: half the size, no measurable score change) and metadata; return sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).contiguous()
               for name, t in network.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".part")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: metadata.to_json()})
    tmp.replace(path)
    return file_sha256(path)


def read_metadata(path: Path) -> CheckpointMetadata:
    """Read only the metadata (cheap: no weights are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from exc
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without '{METADATA_KEY}' metadata")
    return CheckpointMetadata.from_json(raw, path)


@dataclass(frozen=True)
class LoadedCheckpoint:
    network: torch.nn.Module
    metadata: CheckpointMetadata
    sha256: str
    path: Path


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Load weights into a fresh fp32 network; reject files whose tensors do not fit the architecture."""
    path = Path(path)
    metadata = read_metadata(path)
    network = build_network(num_classes=len(metadata.class_names))
    expected = network.state_dict()
    with safe_open(str(path), framework="pt") as handle:
        names = set(handle.keys())
        if names != set(expected):
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            raise CheckpointError(f"{path}: tensors do not match {metadata.architecture} "
                                  f"(missing {missing[:3]}, unexpected {extra[:3]})")
        state = {name: handle.get_tensor(name).to(expected[name].dtype) for name in names}
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: tensor shapes do not match ({exc})") from exc
    network.eval()
    return LoadedCheckpoint(network=network, metadata=metadata, sha256=file_sha256(path), path=path)


def ensure_untrained_checkpoint(cache_dir: Path) -> Path:
    """The placeholder model until a trained one ships: seeded random weights, identical bytes everywhere."""
    path = Path(cache_dir) / f"{UNTRAINED_VERSION}.safetensors"
    if path.is_file():
        return path
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(UNTRAINED_SEED)
        network = build_network()
    finally:
        torch.random.set_rng_state(generator_state)
    save_checkpoint(network, CheckpointMetadata(version=UNTRAINED_VERSION, trained=False), path)
    return path


SHIPPED_CHECKPOINT = Path(__file__).parent / "weights" / "cxr-resnet50.safetensors"


def default_checkpoint(cache_dir: Path) -> Path:
    """The shipped trained model when the package has one, else the untrained placeholder."""
    return SHIPPED_CHECKPOINT if SHIPPED_CHECKPOINT.is_file() else ensure_untrained_checkpoint(cache_dir)

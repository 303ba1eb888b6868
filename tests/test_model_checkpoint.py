"""Checkpoint format: round trip, identity, and clear errors for files that are not ours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    CheckpointMetadata,
    ensure_untrained_checkpoint,
    file_sha256,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from model.inference import Classifier
from model.network import build_network
from model.preprocess import PreprocessSpec, to_model_input


def test_save_load_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    network = build_network().eval()
    metadata = CheckpointMetadata(version="t1", trained=True, threshold=0.42)
    sha = save_checkpoint(network, metadata, tmp_path / "m.safetensors", dtype=torch.float32)
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.sha256 == sha == file_sha256(tmp_path / "m.safetensors")
    assert loaded.metadata == metadata
    batch = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.network(batch), network(batch))


def test_untrained_default_is_reproducible(tmp_path: Path, model_path: Path) -> None:
    again = ensure_untrained_checkpoint(tmp_path)
    assert file_sha256(again) == file_sha256(model_path)
    assert read_metadata(again).trained is False


def test_classifier_scores_are_probabilities(model_path: Path) -> None:
    classifier = Classifier(model_path, device="cpu")
    image = np.random.default_rng(0).random((300, 250), dtype=np.float32)
    batch = to_model_input(image, classifier.preprocess)[None]
    assert batch.shape == (1, 3, 224, 224)
    scores = classifier.score(batch)
    assert scores.shape == (1,) and 0.0 <= float(scores[0]) <= 1.0


def test_preprocessing_normalises_with_the_checkpoint_spec() -> None:
    spec = PreprocessSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    tensor = to_model_input(np.full((64, 48), 0.75, dtype=np.float32), spec)
    assert tensor.shape == (3, 32, 32)
    torch.testing.assert_close(tensor, torch.full((3, 32, 32), 1.0))


def _write(path: Path, metadata: dict[str, str] | None, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    save_file(tensors or {"w": torch.zeros(1)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (None, "without 'cxr_triage' metadata"),
        ({METADATA_KEY: "{not json"}, "not valid JSON"),
        ({METADATA_KEY: json.dumps({"version": "x"})}, "metadata lacks"),
    ],
)
def test_bad_metadata_is_rejected_clearly(tmp_path: Path, metadata: dict[str, str] | None, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_write(tmp_path / "bad.safetensors", metadata))


def test_wrong_architecture_and_wrong_tensors_are_rejected(tmp_path: Path) -> None:
    good = json.loads(CheckpointMetadata(version="x", trained=True).to_json())
    with pytest.raises(CheckpointError, match="architecture"):
        load_checkpoint(_write(tmp_path / "a.safetensors", {METADATA_KEY: json.dumps({**good, "architecture": "vgg"})}))
    with pytest.raises(CheckpointError, match="tensors do not match"):
        load_checkpoint(_write(tmp_path / "b.safetensors", {METADATA_KEY: json.dumps(good)}))
    (tmp_path / "c.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_trained_metadata_with_its_own_input_size_round_trips(tmp_path: Path) -> None:
    """A model trained at another size carries it: serving preprocesses at the size the model was validated at."""
    torch.manual_seed(2)
    spec = PreprocessSpec(size=96)
    metadata = CheckpointMetadata(
        version="t96", trained=True, threshold=0.31, input_size=96, preprocessing=spec.to_dict(),
        training_data={"recipe": {"epochs_by_size": {"96": 6.0, "128": 1.0}}, "train_images": 10},
        validation_metrics={"auc": 0.97, "auc_ci95": [0.95, 0.98], "sensitivity": 0.95})
    path = tmp_path / "t96.safetensors"
    save_checkpoint(build_network().eval(), metadata, path)
    assert read_metadata(path) == metadata
    classifier = Classifier(path, device="cpu")
    assert classifier.preprocess == spec
    batch = to_model_input(np.zeros((120, 100), dtype=np.float32), classifier.preprocess)[None]
    assert batch.shape == (1, 3, 96, 96) and classifier.score(batch).shape == (1,)

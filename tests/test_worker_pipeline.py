"""worker.pipeline and worker.served_model: the worker's start registers the model once and the pipeline scores under
what it was handed (identity, version, threshold); every file, real laterals and hostile input alike, ends in an
outcome with a reason, never an exception."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from db.engine import open_database
from db.model_registry import model_versions
from db.models import InstanceStatus
from dicom_io.synthetic import chest_dataset
from model.checkpoint import CheckpointError, CheckpointMetadata, save_checkpoint
from model.network import build_network
from worker.config import WorkerConfig
from worker.pipeline import Pipeline
from worker.served_model import register_served_model

from conftest import SHARED_DATA
from pipelines import worker_pipeline
from pixel_samples import dataset_from_pixels


def _config(tmp_path: Path, model_path: Path, **values: object) -> WorkerConfig:
    return WorkerConfig(database_url=f"sqlite:///{tmp_path / 'p.sqlite3'}", broker_url="filesystem://localhost//",
                        spool_dir=tmp_path, rejected_dir=tmp_path, queue_dir=tmp_path / "q", model_path=model_path,
                        model_cache_dir=tmp_path, device="cpu", **values)  # type: ignore[arg-type]


def test_the_pipeline_scores_under_the_model_the_worker_registered(tmp_path: Path, model_path: Path) -> None:
    config = _config(tmp_path, model_path, threshold=0.37)  # the site's override of the checkpoint's threshold
    _engine, sessions = open_database(config.database_url)
    served = register_served_model(sessions, config)
    with sessions() as session:
        [registered] = model_versions(session)
    assert (registered.sha256, registered.version, registered.trained, registered.threshold) == (
        served.sha256, served.version, False, 0.37)
    # The pipeline takes what it is handed and registers nothing of its own, whatever its configuration says.
    pipeline = Pipeline(replace(config, threshold=0.61), sessions, served)
    source = tmp_path / "chest.dcm"
    chest_dataset(patient_index=3).save_as(source, enforce_file_format=True)
    outcome = pipeline.analyse(source)
    assert outcome.status == InstanceStatus.DONE and outcome.score is not None
    assert (outcome.model_sha256, outcome.model_version, outcome.threshold) == (served.sha256, served.version, 0.37)
    with sessions() as session:
        assert [(m.sha256, m.threshold) for m in model_versions(session)] == [(served.sha256, 0.37)]


def test_a_checkpoint_replaced_after_the_worker_registered_it_is_refused(tmp_path: Path, model_path: Path) -> None:
    """Results must carry the identity the worklist knows: a file swapped under a running worker is not scored."""
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy(model_path, checkpoint)
    config = _config(tmp_path, checkpoint)
    _engine, sessions = open_database(config.database_url)
    served = register_served_model(sessions, config)
    with torch.random.fork_rng():  # other tests' random numbers stay as they were
        network = build_network()
    save_checkpoint(network, CheckpointMetadata(version="swapped", trained=False), checkpoint)
    with pytest.raises(CheckpointError, match="changed after the worker registered it"):
        Pipeline(config, sessions, served)


def lateral_images(limit: int = 3) -> list[Path]:
    folders = sorted(SHARED_DATA.glob("covid-ieee8023/*_lateral"))
    if not folders:
        pytest.skip(f"{SHARED_DATA / 'covid-ieee8023'} lateral folders are absent")
    return [path for folder in folders for path in sorted(folder.iterdir())[:limit]]


def test_real_lateral_views_are_not_analysed(tmp_path: Path, model_path: Path) -> None:
    """Lateral images wrapped in DICOM go through the worker's own analysis and end as 'lateral view'."""
    pipeline = worker_pipeline(_config(tmp_path, model_path))
    for index, source in enumerate(lateral_images()):
        gray = np.asarray(Image.open(source).convert("L"), dtype=np.uint16)
        ds = dataset_from_pixels((gray << 4) | (gray >> 4))
        ds.ViewPosition = "LL"
        path = tmp_path / f"lateral-{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        outcome = pipeline.analyse(path)
        assert outcome.status == InstanceStatus.NOT_ANALYSED and outcome.reason == "LATERAL_VIEW", source.name
    # And hostile input through the same entry point: a reason, never an exception.
    broken = chest_dataset(rows=64, columns=48)
    broken.PixelData = broken.PixelData[:100]
    broken.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    outcome = pipeline.analyse(tmp_path / "broken.dcm")
    assert outcome.status == InstanceStatus.FAILED and outcome.reason == "UNREADABLE_PIXEL_DATA"
    (tmp_path / "garbage.dcm").write_bytes(b"\0" * 10)
    garbage = pipeline.analyse(tmp_path / "garbage.dcm")
    assert garbage.status == InstanceStatus.FAILED and garbage.reason == "UNREADABLE_DICOM"

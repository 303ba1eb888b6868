"""The model a worker serves: its checkpoint, its identity (the file's sha256) and its operating threshold. The process
that starts a worker registers it once, before any task runs, so the worklist knows the model (untrained or not) from
the start; the pipeline is handed what was registered and scores under that identity."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db.model_registry import register_model
from worker.config import WorkerConfig


@dataclass(frozen=True)
class ServedModel:
    path: Path
    sha256: str  # the model's identity, recorded with every result
    version: str
    threshold: float  # the site's override (TRIAGE_THRESHOLD), else the checkpoint's


def checkpoint_path(config: WorkerConfig) -> Path:
    """The configured checkpoint, else the shipped model (or the untrained placeholder where none shipped)."""
    from model.checkpoint import default_checkpoint  # torch: only where a model is used

    return config.model_path or default_checkpoint(config.model_cache_dir)


def register_served_model(sessions: sessionmaker[Session], config: WorkerConfig) -> ServedModel:
    """Read the checkpoint's metadata and hash it (no weights are loaded), record it in the model registry and
    return what the pipeline needs to know of it."""
    from model.checkpoint import file_sha256, read_metadata

    path = checkpoint_path(config)
    metadata = read_metadata(path)
    served = ServedModel(path=path, sha256=file_sha256(path), version=metadata.version,
                         threshold=config.threshold if config.threshold is not None else metadata.threshold)
    with sessions.begin() as session:
        register_model(session, sha256=served.sha256, version=metadata.version, trained=metadata.trained,
                       threshold=served.threshold, metadata=json.loads(metadata.to_json()))
    return served

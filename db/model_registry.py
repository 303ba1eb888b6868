"""The models workers have loaded: registered once per checkpoint (its sha256 is the identity), read by the worklist
(which model is untrained, which validated population a study is judged by), the model page and /metrics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import ModelVersion, Study, as_utc, utcnow


def register_model(session: Session, *, sha256: str, version: str, trained: bool, threshold: float,
                   metadata: dict[str, Any]) -> None:
    """Record a checkpoint (again: its version, threshold and metadata are refreshed, its first sighting kept)."""
    model = session.get(ModelVersion, sha256) or ModelVersion(sha256=sha256, registered_at=utcnow())
    model.version, model.trained, model.threshold, model.metadata_json = version, trained, threshold, metadata
    session.add(model)


def newest_model(session: Session) -> ModelVersion | None:
    """The model registered last: the one the workers run now (a study nothing scored yet is judged by it)."""
    return session.scalars(select(ModelVersion).order_by(ModelVersion.registered_at.desc()).limit(1)).first()


def untrained_models_in_use(session: Session) -> bool:
    """True when any result on the worklist, or the newest registered model, is untrained."""
    newest = newest_model(session)
    if newest is not None and not newest.trained:
        return True
    used = select(Study.id).join(ModelVersion, ModelVersion.sha256 == Study.model_sha256).where(
        ModelVersion.trained.is_(False))
    return session.execute(used.limit(1)).first() is not None


@dataclass(frozen=True)
class ModelVersionRow:
    """A registered model with how many studies currently carry its result (the model page and GET /api/models)."""

    sha256: str
    version: str
    trained: bool
    threshold: float
    registered_at: datetime
    studies: int
    metadata: dict[str, Any]


def model_versions(session: Session) -> list[ModelVersionRow]:
    """Every model that produced results, newest first, with how many studies currently carry its result."""
    in_use = dict(session.execute(select(Study.model_sha256, func.count(Study.id)).group_by(Study.model_sha256)).all())
    return [
        ModelVersionRow(sha256=m.sha256, version=m.version, trained=m.trained, threshold=m.threshold,
                        registered_at=as_utc(m.registered_at), studies=int(in_use.get(m.sha256, 0)),
                        metadata=m.metadata_json)
        for m in session.scalars(select(ModelVersion).order_by(ModelVersion.registered_at.desc()))
    ]


@dataclass(frozen=True)
class RegisteredModel:
    version: str
    sha256: str
    trained: bool


def registered_models(session: Session) -> list[RegisteredModel]:
    """Every model a worker has loaded, first registered first (rows are added, never removed)."""
    return [RegisteredModel(m.version, m.sha256, bool(m.trained))
            for m in session.scalars(select(ModelVersion).order_by(ModelVersion.registered_at))]

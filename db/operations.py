"""Counts for operations (/metrics), read at scrape time: the listener, workers and web server are separate
processes, and the tables already hold every number. Which are counters (never go down) and which are gauges
(current states, recounted) is decided here, by whether the rows they count are only ever added."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import Instance, InstanceStatus, ModelVersion, Rejection, Study, as_utc, utcnow


@dataclass(frozen=True)
class ModelFlags:
    """Studies whose current result came from one model version: how many were scored, how many are flagged."""

    scored: int
    flagged: int


def flags_by_model_version(session: Session) -> dict[str, ModelFlags]:
    """Current state (a gauge): a new image or a new model can lower a study's flag or move it to another model."""
    flagged = func.sum(case((Study.flag.is_(True), 1), else_=0))
    rows = session.execute(select(Study.model_version, func.count(Study.id), flagged)
                           .where(Study.model_version.is_not(None), Study.score.is_not(None))
                           .group_by(Study.model_version))
    return {str(version): ModelFlags(int(scored), int(flags or 0)) for version, scored, flags in rows.tuples()}


def not_analysed_by_reason(session: Session) -> dict[str, int]:
    """Instances whose current copy could not be scored, by reason code (a gauge: a resent copy may be scored)."""
    rows = session.execute(select(Instance.reason, func.count(Instance.id))
                           .where(Instance.status == InstanceStatus.NOT_ANALYSED).group_by(Instance.reason))
    counts: dict[str, int] = {}
    for reason, count in rows:
        counts[reason or "UNKNOWN"] = counts.get(reason or "UNKNOWN", 0) + int(count)
    return counts


def rejections_by_status(session: Session) -> dict[int, int]:
    """Refused C-STOREs and imports by DIMSE status. Rejection rows are only ever added: a counter."""
    rows = session.execute(select(Rejection.status, func.count(Rejection.id)).group_by(Rejection.status))
    return {int(status): int(count) for status, count in rows}


def oldest_unread_flagged_received_at(session: Session) -> datetime | None:
    """When the longest-waiting unread flagged study arrived; None when no flagged study waits."""
    oldest = session.scalar(select(func.min(Study.received_at))
                            .where(Study.flag.is_(True), Study.read_at.is_(None)))
    return as_utc(oldest)


def unread_flagged_age_s(session: Session, now: datetime | None = None) -> float:
    """Seconds the oldest unread flagged study has waited since it arrived; 0 when none waits."""
    oldest = oldest_unread_flagged_received_at(session)
    if oldest is None:
        return 0.0
    return max(0.0, ((now or utcnow()) - oldest).total_seconds())


@dataclass(frozen=True)
class RegisteredModel:
    version: str
    sha256: str
    trained: bool


def registered_models(session: Session) -> list[RegisteredModel]:
    """Every model a worker has loaded (rows are added, never removed)."""
    return [RegisteredModel(m.version, m.sha256, bool(m.trained))
            for m in session.scalars(select(ModelVersion).order_by(ModelVersion.registered_at))]


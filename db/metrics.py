"""Every count /metrics reads, at scrape time: the listener, workers and web server are separate processes, and the
tables already hold every number. Which are counters (never go down) and which are gauges (current states,
recounted) is decided here, by whether the rows they count are only ever added."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.model_registry import untrained_models_in_use
from db.models import AssociationRefusal, Instance, InstanceStatus, Rejection, Result, Study, as_utc, utcnow


def counts_by_status(session: Session) -> dict[str, int]:
    """Instances per status (their current copy)."""
    rows = session.execute(select(Instance.status, func.count()).group_by(Instance.status))
    return {status.value: count for status, count in rows}


@dataclass(frozen=True)
class HistogramCounts:
    """Cumulative counts per upper bound (as Prometheus wants them), the total count and the sum."""

    buckets: list[tuple[float, int]]
    count: int
    total: float


def _histogram(session: Session, column: Any, bounds: list[float], *where: Any, group_by: Any = None
               ) -> dict[Any, HistogramCounts]:
    columns = [func.sum(case((column <= bound, 1), else_=0)) for bound in bounds]
    query = select(*columns, func.count(column), func.sum(column)).where(column.is_not(None), *where)
    if group_by is not None:
        query = query.add_columns(group_by).group_by(group_by)
    result: dict[Any, HistogramCounts] = {}
    for row in session.execute(query):
        count = int(row[len(bounds)] or 0)
        if count == 0:
            continue
        key = row[len(bounds) + 2] if group_by is not None else None
        result[key] = HistogramCounts([(bound, int(row[i] or 0)) for i, bound in enumerate(bounds)], count,
                                      float(row[len(bounds) + 1] or 0.0))
    return result


@dataclass(frozen=True)
class MetricsSnapshot:
    received: int  # every C-STORE or import committed, duplicates included
    by_status: dict[str, int]  # instances per status
    failed_by_reason: dict[str, int]
    receive_to_flag: HistogramCounts | None
    scores: dict[str, HistogramCounts]  # per model version
    untrained_in_use: bool


def metrics_snapshot(session: Session, latency_bounds: list[float], score_bounds: list[float]) -> MetricsSnapshot:
    received = int(session.scalar(select(func.coalesce(func.sum(Instance.receive_count), 0))) or 0)
    failed = _reasons(session, InstanceStatus.FAILED)
    latency = _histogram(session, Study.time_to_flag_s, latency_bounds).get(None)
    scores = _histogram(session, Result.score, score_bounds, group_by=Result.model_version)
    return MetricsSnapshot(received, counts_by_status(session), failed,
                           latency, {str(k): v for k, v in scores.items()}, untrained_models_in_use(session))


@dataclass(frozen=True)
class ModelFlags:
    """Studies whose current result came from one model version: how many were scored, how many are flagged."""

    scored: int
    flagged: int


def flags_by_model_version(session: Session) -> dict[str, ModelFlags]:
    """Current state (a gauge): a new image or a new model can lower a study's flag or move it to another model."""
    flagged = func.count().filter(Study.flag.is_(True))
    rows = session.execute(select(Study.model_version, func.count(Study.id), flagged)
                           .where(Study.model_version.is_not(None), Study.score.is_not(None))
                           .group_by(Study.model_version))
    return {str(version): ModelFlags(int(scored), int(flags)) for version, scored, flags in rows}


def not_analysed_by_reason(session: Session) -> dict[str, int]:
    """Instances whose current copy could not be scored, by reason code (a gauge: a resent copy may be scored)."""
    return _reasons(session, InstanceStatus.NOT_ANALYSED)


def _reasons(session: Session, status: InstanceStatus) -> dict[str, int]:
    """Instances in ``status`` by reason code (a missing reason counted as UNKNOWN)."""
    rows = session.execute(select(Instance.reason, func.count(Instance.id))
                           .where(Instance.status == status).group_by(Instance.reason))
    counts: dict[str, int] = {}
    for reason, count in rows:
        counts[reason or "UNKNOWN"] = counts.get(reason or "UNKNOWN", 0) + int(count)
    return counts


def rejections_by_status(session: Session) -> dict[int, int]:
    """Refused C-STOREs and imports by DIMSE status. Rejection rows are only ever added: a counter."""
    rows = session.execute(select(Rejection.status, func.count(Rejection.id)).group_by(Rejection.status))
    return {int(status): int(count) for status, count in rows}


def association_refusals_by_reason(session: Session) -> dict[str, int]:
    """Associations refused before any C-STORE, by reason code. Rows are only ever added: a counter."""
    rows = session.execute(select(AssociationRefusal.reason, func.count(AssociationRefusal.id))
                           .group_by(AssociationRefusal.reason))
    return {str(reason): int(count) for reason, count in rows}


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



"""The result outbox: which studies need a new report version, the versions themselves, and their deliveries.

A study gets a new report version when its final result differs from the last version's (a new image, a new
model); each version gets one delivery row per destination, claimed before a send and retried with back-off, so a
destination that is down delays a result but never loses it, and a delivered version is never sent again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from db.model_registry import newest_model
from db.models import Delivery, DeliveryStatus, Instance, Study, StudyReport, StudyStatus, as_utc, utcnow


@dataclass(frozen=True)
class ImageOutcome:
    """One received image as the report describes it."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    status: str  # DONE, NOT_ANALYSED or FAILED
    score: float | None
    reason: str | None
    spool_path: str | None  # where its header is read from (not part of the signature); None: purged by retention
    heatmap_path: str | None = None  # the worker's Grad-CAM PNG, for the optional Secondary Capture (idem)


@dataclass(frozen=True)
class ResultSnapshot:
    """A study's final result, frozen into a report version (everything the SR and the HL7 message say)."""

    study_instance_uid: str
    status: str  # DONE or NOT_ANALYSED
    score: float | None
    threshold: float | None
    flag: bool
    reason: str | None
    model_version: str | None
    model_sha256: str | None
    images: tuple[ImageOutcome, ...] = field(default_factory=tuple)

    def signature(self) -> str:
        """Same result, same signature: a resent copy scored alike makes no new version."""
        content = asdict(self)
        for image in content["images"]:
            image.pop("spool_path")
            image.pop("heatmap_path")
            image["score"] = None if image["score"] is None else round(image["score"], 6)
        content["score"] = None if self.score is None else round(self.score, 6)
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultSnapshot:
        images = tuple(ImageOutcome(**image) for image in data.get("images", ()))
        return cls(**{**data, "images": images})


@dataclass(frozen=True)
class PreviousReport:
    version: int
    signature: str
    series_instance_uid: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class DeliveryJob:
    """A claimed delivery with what its sender needs; the patient fields go only into the HL7 message."""

    delivery_id: int
    kind: str
    destination: str
    attempts: int  # including this one
    report_id: int
    report_version: int
    files: tuple[str, ...]
    snapshot: ResultSnapshot
    patient_id: str
    patient_name: str
    accession_number: str
    created_at: datetime


def due_studies(session: Session, *, quiet_before: datetime, limit: int = 100) -> list[int]:
    """Studies with a final result that may need a new report version and no new image since ``quiet_before``."""
    latest = (select(Instance.study_id, func.max(Instance.received_at).label("latest"))
              .group_by(Instance.study_id).subquery())
    query = (select(Study.id).join(latest, latest.c.study_id == Study.id)
             .where(Study.report_due.is_(True), Study.status != StudyStatus.PENDING, latest.c.latest < quiet_before)
             .order_by(Study.id).limit(limit))
    return list(session.scalars(query))


def snapshot(session: Session, study_id: int) -> ResultSnapshot | None:
    """The study's current result, or None while it is not final."""
    study = session.get(Study, study_id)
    if study is None or study.status == StudyStatus.PENDING:
        return None
    instances = session.scalars(select(Instance).where(Instance.study_id == study_id)
                                .order_by(Instance.sop_instance_uid)).all()
    images = tuple(_outcome(i) for i in instances)
    version, sha256 = study.model_version, study.model_sha256
    if sha256 is None:  # nothing was scored: the report still names the model the workers run
        latest = newest_model(session)
        version, sha256 = (latest.version, latest.sha256) if latest else (None, None)
    return ResultSnapshot(study.study_instance_uid, study.status.value, study.score, study.threshold, study.flag,
                          study.reason, version, sha256, images)


def _outcome(instance: Instance) -> ImageOutcome:
    """A purged image's files are gone for the report even while retention has yet to delete them: no paths."""
    kept = instance.purged_at is None
    return ImageOutcome(instance.sop_instance_uid, instance.sop_class_uid, instance.series_instance_uid,
                        instance.status.value, instance.score, instance.reason,
                        instance.spool_path if kept else None, instance.heatmap_path if kept else None)


def previous_reports(session: Session, study_id: int) -> list[PreviousReport]:
    rows = session.scalars(select(StudyReport).where(StudyReport.study_id == study_id)
                           .order_by(StudyReport.version)).all()
    return [PreviousReport(r.version, r.signature, r.series_instance_uid, tuple(r.files)) for r in rows]


def clear_due(session: Session, study_id: int) -> None:
    """The result is the one already reported: nothing to send."""
    session.execute(update(Study).where(Study.id == study_id).values(report_due=False))


def add_report(session: Session, *, study_id: int, version: int, result: ResultSnapshot, series_instance_uid: str,
               sop_instance_uid: str, files: Sequence[str], destinations: Sequence[tuple[str, str]]) -> int:
    """Record a new report version with one pending delivery per ``(kind, destination)``; undelivered rows of older
    versions are superseded (a stale result is never sent after a newer one). The unique (study, version) makes a
    second reporter racing for the same version fail here instead of sending twice."""
    report = StudyReport(study_id=study_id, version=version, signature=result.signature(),
                         snapshot=result.to_json(), series_instance_uid=series_instance_uid,
                         sop_instance_uid=sop_instance_uid, files=list(files), created_at=utcnow())
    session.add(report)
    session.flush()
    older = select(StudyReport.id).where(StudyReport.study_id == study_id, StudyReport.version < version)
    session.execute(update(Delivery)
                    .where(Delivery.report_id.in_(older),
                           Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]))
                    .values(status=DeliveryStatus.SUPERSEDED, claimed_until=None,
                            last_error=f"replaced by version {version}"))
    now = utcnow()
    for kind, destination in destinations:
        session.add(Delivery(report_id=report.id, kind=kind, destination=destination, next_attempt_at=now,
                             created_at=now))
    clear_due(session, study_id)
    return report.id


def claim_due(session: Session, *, now: datetime, lease: timedelta, limit: int = 20) -> list[DeliveryJob]:
    """Claim deliveries whose next attempt is due (or whose claim expired: a reporter died mid-send). Each claim is
    a conditional update, so two reporters never send the same row at once."""
    due = or_(Delivery.status == DeliveryStatus.PENDING,
              (Delivery.status == DeliveryStatus.SENDING) & (Delivery.claimed_until < now))
    candidates = session.execute(
        select(Delivery.id, Delivery.status).where(due, Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)).all()
    jobs = []
    for delivery_id, status in candidates:
        claimed = session.execute(
            update(Delivery).where(Delivery.id == delivery_id, Delivery.status == status, due)
            .values(status=DeliveryStatus.SENDING, claimed_until=now + lease, attempts=Delivery.attempts + 1))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            continue
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        session.refresh(delivery)
        report = delivery.report
        study = report.study
        jobs.append(DeliveryJob(delivery.id, delivery.kind, delivery.destination, delivery.attempts, report.id,
                                report.version, tuple(report.files), ResultSnapshot.from_json(report.snapshot),
                                study.patient_id, study.patient_name, study.accession_number,
                                as_utc(report.created_at) or now))
    return jobs


def record_attempt(session: Session, delivery_id: int, *, error: str | None, retry_at: datetime | None) -> str:
    """The outcome of one send: delivered (``error`` None), retried at ``retry_at``, or dead (``retry_at`` None).
    A row superseded while it was being sent keeps that state. Returns the new status."""
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None:
        return "MISSING"
    if delivery.status == DeliveryStatus.SUPERSEDED and error is not None:
        return delivery.status.value
    delivery.claimed_until = None
    if error is None:
        delivery.status, delivery.delivered_at, delivery.last_error = DeliveryStatus.DELIVERED, utcnow(), None
    else:
        delivery.last_error = error[:2000]
        if retry_at is None:
            delivery.status = DeliveryStatus.DEAD
        else:
            delivery.status, delivery.next_attempt_at = DeliveryStatus.PENDING, retry_at
    return delivery.status.value


def study_reports(session: Session, study_uid: str) -> list[dict[str, Any]]:
    """Every report version of a study with its deliveries, newest first (the study page and the API)."""
    rows = session.scalars(select(StudyReport).join(Study, Study.id == StudyReport.study_id)
                           .where(Study.study_instance_uid == study_uid)
                           .order_by(StudyReport.version.desc())).all()
    return [{
        "version": r.version,
        "sr_sop_instance_uid": r.sop_instance_uid,
        "sr_series_instance_uid": r.series_instance_uid,
        "created_at": as_utc(r.created_at),
        "flag": r.snapshot.get("flag"),
        "score": r.snapshot.get("score"),
        "deliveries": [{
            "kind": d.kind,
            "destination": d.destination,
            "status": d.status.value,
            "attempts": d.attempts,
            "next_attempt_at": as_utc(d.next_attempt_at) if d.status == DeliveryStatus.PENDING else None,
            "delivered_at": as_utc(d.delivered_at),
            "last_error": d.last_error,
        } for d in r.deliveries],
    } for r in rows]


def delivery_counts(session: Session) -> dict[tuple[str, str], int]:
    """Deliveries by (kind, status), for /metrics."""
    rows = session.execute(select(Delivery.kind, Delivery.status, func.count()).group_by(Delivery.kind,
                                                                                       Delivery.status)).all()
    return {(kind, status.value if hasattr(status, "value") else str(status)): count for kind, status, count in rows}

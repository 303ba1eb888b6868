"""Tables: studies (the worklist rows), instances (what was received), results (what a model said), and
audit_events (who read which study, when)."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import overload

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


class InstanceStatus(str, enum.Enum):
    RECEIVED = "RECEIVED"  # committed (spool + row); not yet handed to the queue
    QUEUED = "QUEUED"  # a task was published
    PROCESSING = "PROCESSING"  # a worker claimed it
    DONE = "DONE"  # scored
    NOT_ANALYSED = "NOT_ANALYSED"  # readable, but not something the model may score (lateral view, not chest…)
    FAILED = "FAILED"  # permanent error (no or unreadable pixels…): the dead-letter record

    @classmethod
    def unfinished(cls) -> tuple[InstanceStatus, ...]:
        return (cls.RECEIVED, cls.QUEUED, cls.PROCESSING)


class StudyStatus(str, enum.Enum):
    PENDING = "PENDING"
    DONE = "DONE"
    NOT_ANALYSED = "NOT_ANALYSED"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=False, length=16, validate_strings=True)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    # Header text is kept verbatim, however long: senders break the VR limits, and a shortened patient ID could
    # name another patient (migration 0003).
    patient_name: Mapped[str] = mapped_column(Text, default="")
    patient_id: Mapped[str] = mapped_column(Text, default="")
    accession_number: Mapped[str] = mapped_column(Text, default="")
    study_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    study_description: Mapped[str] = mapped_column(Text, default="")
    # Context for the reader, from the headers (migration 0007): None until an image of the study says. A later
    # image fills what is still unknown and never blanks a known value.
    patient_age_years: Mapped[int | None] = mapped_column(Integer, nullable=True)
    patient_sex: Mapped[str | None] = mapped_column(String(1), nullable=True)  # M, F or O
    modality: Mapped[str | None] = mapped_column(Text, nullable=True)
    institution: Mapped[str | None] = mapped_column(Text, nullable=True)
    station: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The order's priority (STAT, HIGH, ROUTINE, MEDIUM, LOW): the file's, else the sender's rule.
    priority: Mapped[str | None] = mapped_column(String(8), nullable=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
    status: Mapped[StudyStatus] = mapped_column(_enum(StudyStatus, "study_status"), default=StudyStatus.PENDING)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    flag: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    flagged_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # When the flag last went up (cleared when a new result lowers it): the default order puts the newest flag
    # first, so a new flag reaches the first screen whatever the backlog.
    flag_raised_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Seconds from the study's latest receive to its final result (flagged_at), kept for the metrics.
    time_to_flag_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A radiologist marked it read: it drops to the bottom of its group (flagged or not) and never disappears.
    read_at: Mapped[datetime | None] = mapped_column(nullable=True)
    read_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Set when the study reaches a final result; the reporter clears it once that result has a report version
    # (or is the same as the last one), so it only ever looks at studies whose result may have changed.
    report_due: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0", index=True)

    instances: Mapped[list[Instance]] = relationship(back_populates="study", order_by="Instance.id")
    reports: Mapped[list[StudyReport]] = relationship(back_populates="study", order_by="StudyReport.version")


PURGE_PENDING = "purged_at IS NOT NULL AND pixels_deleted_at IS NULL"


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(Text, default="")
    body_part: Mapped[str] = mapped_column(Text, default="")
    view_position: Mapped[str] = mapped_column(Text, default="")
    spool_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    receive_count: Mapped[int] = mapped_column(Integer, default=1)  # a duplicate bumps it: stale work is dropped
    status: Mapped[InstanceStatus] = mapped_column(
        _enum(InstanceStatus, "instance_status"), default=InstanceStatus.RECEIVED, index=True
    )
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # technical detail, never patient data
    assumptions: Mapped[str | None] = mapped_column(String(256), nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)  # retention selects by it
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The current result, copied from ``results`` (which keeps one row per model version) for cheap queries.
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Written by the worker with the current result: the display image the model saw and its Grad-CAM overlay.
    preview_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    heatmap_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    display_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # full-resolution display image PNG
    # When the retention policy removed its pixels (spool copy and PNGs): from then on every reader treats them as
    # gone, whatever the paths say; None while they are kept. A re-sent copy clears it (migration 0010).
    purged_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # When retention's deletion of those files was done (the paths above are then NULL; spool_path stays as a record
    # of where the copy was). Purged but None: a crash or a file that could not be deleted left it pending, and the
    # next pass finds the files by their paths (migration 0011).
    pixels_deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)

    # Retention looks for pending purges every hour: a partial index keeps that a lookup of the few, not a scan.
    __table_args__ = (Index("ix_instances_purge_pending", "id", sqlite_where=text(PURGE_PENDING),
                            postgresql_where=text(PURGE_PENDING)),)

    study: Mapped[Study] = relationship(back_populates="instances")


class Result(Base):
    """What one model version said about one instance; upserted, so a redelivered task never adds a row."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("instance_id", "model_sha256", name="uq_results_instance_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    model_version: Mapped[str] = mapped_column(String(128))
    model_sha256: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    flag: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """Every model that produced results, so the page can say which were untrained."""

    __tablename__ = "model_versions"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(128))
    trained: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[float] = mapped_column(Float)
    metadata_json: Mapped[dict] = mapped_column(JSON)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class Rejection(Base):
    """A C-STORE or import we refused; the payload is kept in the data folder for a person to look at."""

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    payload_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)


class AssociationRefusal(Base):
    """An association we turned away before any C-STORE (an AE title not on the allowlist, a wrong called AE
    title, the association limit, a non-loopback caller with no allowlist): the sender's setup is wrong or we are
    full, and a person must see who and why. Only ever added: /metrics counts them by reason."""

    __tablename__ = "association_refusals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    refused_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(String(32))
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    peer: Mapped[str] = mapped_column(String(64), default="")


class AuditEvent(Base):
    """Every read of a study (page, API, image) and every read/unread mark: who, when, which study."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))  # the token's name, or "loopback-demo" without tokens
    action: Mapped[str] = mapped_column(String(32))  # view, api, image, list, mark_read, mark_unread
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    detail: Mapped[str | None] = mapped_column(String(512), nullable=True)  # route or SOP instance UID, no patient data


class WebSession(Base):
    """A signed-in page session: random per login, kept server-side so sign-out and expiry really end it (several
    web processes share it through the database). Only the token's sha256 is stored."""

    __tablename__ = "web_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)


class WorkerHeartbeat(Base):
    """One row per worker process, refreshed while it runs: /healthz and /metrics tell a dead fleet from an idle
    one (a worker that stops beating is gone, whatever its last task was)."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DeliveryStatus(str, enum.Enum):
    PENDING = "PENDING"  # waiting for its next attempt (next_attempt_at)
    SENDING = "SENDING"  # claimed by a reporter until claimed_until (a crash makes it due again after that)
    DELIVERED = "DELIVERED"  # the destination acknowledged it
    DEAD = "DEAD"  # the last attempt failed: the dead-letter record, shown on the study page and in /metrics
    SUPERSEDED = "SUPERSEDED"  # a newer version of the study's report replaced it before it could be delivered


class StudyReport(Base):
    """One version of a study's result as it goes back to the PACS and RIS: the snapshot it was built from and the
    SR file written once, so every destination and every retry gets the same bytes and the same SOP Instance UID."""

    __tablename__ = "study_reports"
    __table_args__ = (UniqueConstraint("study_id", "version", name="uq_study_reports_study_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, … a later one replaces the earlier
    signature: Mapped[str] = mapped_column(String(64))  # sha256 of the snapshot: same result, no new version
    snapshot: Mapped[dict] = mapped_column(JSON)  # study score/flag/threshold/model and each image's outcome
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    files: Mapped[list] = mapped_column(JSON)  # the SR file first, then the heat-map capture if one was made
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="reports")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="report", order_by="Delivery.id")


class Delivery(Base):
    """The outbox of results: one row per (report version, destination), retried with back-off until delivered
    or dead."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("report_id", "destination", name="uq_deliveries_report_destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("study_reports.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # dicom (C-STORE), stow (DICOMweb STOW-RS), hl7 (ORU over MLLP)
    destination: Mapped[str] = mapped_column(String(512))  # AET@host:port, the STOW URL, or host:port
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus, "delivery_status"),
                                                   default=DeliveryStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    claimed_until: Mapped[datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # technical, never patient data
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)

    report: Mapped[StudyReport] = relationship(back_populates="deliveries")

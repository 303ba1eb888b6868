"""The write path: the commit point's record of a received instance, the outbox (which instances still need a task)
and the worker's claim and outcome, with the study's score and flag kept current. Functions on a Session: callers
own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import (
    AssociationRefusal,
    Instance,
    InstanceStatus,
    Rejection,
    Result,
    Study,
    StudyStatus,
    as_utc,
    utcnow,
)


@dataclass(frozen=True)
class ReceivedRecord:
    """What the commit point stores about a received instance (plain values: db knows nothing of DICOM)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    body_part: str
    view_position: str
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: date | None
    study_description: str
    spool_path: str
    size_bytes: int
    calling_ae: str
    # Study context (None or "" = the file does not say); the priority is the file's or the sender's rule.
    patient_age_years: int | None = None
    patient_sex: str | None = None
    institution: str = ""
    station: str = ""
    priority: str | None = None


@dataclass(frozen=True)
class WorkItem:
    """An instance as the outbox knows it: the receive_count tells a stale task from the current one, and
    ``claims`` (its attempts when read) tells an abandoned claim from a worker that has claimed it since."""

    instance_id: int
    receive_count: int
    claims: int = 0


@dataclass(frozen=True)
class Claim:
    instance_id: int
    study_id: int
    receive_count: int
    spool_path: str
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What processing an instance concluded."""

    status: InstanceStatus
    reason: str | None = None
    detail: str | None = None
    assumptions: str | None = None
    score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    preview_path: str | None = None  # PNG of the display image the model saw (worker.previews)
    heatmap_path: str | None = None  # PNG of the Grad-CAM overlay
    display_path: str | None = None  # PNG of the display image at full resolution (the page's zoom)


# Study columns a received image may fill, and the record field each comes from.
CONTEXT_FIELDS = ("patient_age_years", "patient_sex", "modality", "institution", "station", "priority")


def _fill_context(study: Study, record: ReceivedRecord) -> None:
    """Take what this image says about the study where the study does not know it yet; a known value is never
    replaced, least of all by an empty one (images of one study come from different files and senders)."""
    for name in CONTEXT_FIELDS:
        value = getattr(record, name)
        if isinstance(value, str):
            value = value.strip() or None
        if value is not None and getattr(study, name) is None:
            setattr(study, name, value)


def _get_or_create_study(session: Session, record: ReceivedRecord) -> Study:
    query = select(Study).where(Study.study_instance_uid == record.study_instance_uid).with_for_update()
    study = session.scalars(query).first()
    if study is not None:
        return study
    study = Study(
        study_instance_uid=record.study_instance_uid,
        patient_name=record.patient_name,
        patient_id=record.patient_id,
        accession_number=record.accession_number,
        study_date=record.study_date,
        study_description=record.study_description,
    )
    try:
        with session.begin_nested():  # two associations may bring the first images of one study at once
            session.add(study)
    except IntegrityError:
        study = session.scalars(query).one()
    return study


def record_received(session: Session, record: ReceivedRecord) -> WorkItem:
    """Insert the instance (or refresh it when the SOP Instance UID is known: a resend is processed again)."""
    study = _get_or_create_study(session, record)
    _fill_context(study, record)
    query = select(Instance).where(Instance.sop_instance_uid == record.sop_instance_uid).with_for_update()
    instance = session.scalars(query).first()
    fields = dict(
        study_id=study.id,
        sop_class_uid=record.sop_class_uid,
        series_instance_uid=record.series_instance_uid,
        transfer_syntax_uid=record.transfer_syntax_uid,
        modality=record.modality,
        body_part=record.body_part,
        view_position=record.view_position,
        spool_path=record.spool_path,
        size_bytes=record.size_bytes,
        calling_ae=record.calling_ae,
        received_at=utcnow(),
        status=InstanceStatus.RECEIVED,
        attempts=0,  # a new copy is new work: the poison-message count starts again (a resend never demotes)
        reason=None,
        detail=None,
        assumptions=None,
        enqueued_at=None,
        started_at=None,
        finished_at=None,
        preview_path=None,
        heatmap_path=None,
        display_path=None,
        purged_at=None,  # the new copy's pixels are live (a pending purge's files are its old ones, or kept)
        pixels_deleted_at=None,
    )
    if study.read_at is not None:
        # New pixels in a study someone had read: it is unread again (it may even be flagged now).
        study.read_at, study.read_by = None, None
    if instance is None:
        instance = Instance(sop_instance_uid=record.sop_instance_uid, receive_count=1, **fields)
        session.add(instance)
    else:
        previous_study_id = instance.study_id
        for key, value in fields.items():
            setattr(instance, key, value)
        instance.receive_count += 1
        session.flush()
        if previous_study_id != study.id:
            refresh_study(session, previous_study_id)
    session.flush()
    refresh_study(session, study.id)
    return WorkItem(instance.id, instance.receive_count)


def mark_queued(session: Session, item: WorkItem) -> None:
    """Note that a task was published, unless a worker got there first or a newer copy arrived. An abandoned
    claim (still PROCESSING with the claims the sweeper saw) becomes QUEUED too, so the sweeper republishes it
    once, not on every sweep until a worker takes it."""
    abandoned = and_(Instance.status == InstanceStatus.PROCESSING, Instance.attempts == item.claims)
    session.execute(
        update(Instance)
        .where(Instance.id == item.instance_id, Instance.receive_count == item.receive_count,
               or_(Instance.status.in_([InstanceStatus.RECEIVED, InstanceStatus.QUEUED]), abandoned))
        .values(status=InstanceStatus.QUEUED, enqueued_at=utcnow())
    )


def claim(session: Session, instance_id: int, receive_count: int | None = None) -> Claim | None:
    """Mark the instance as in progress; None when there is nothing to do (gone, or already finished)."""
    instance = session.get(Instance, instance_id, with_for_update=True)
    if instance is None:
        return None
    if receive_count is not None and instance.receive_count != receive_count:
        return None  # a newer copy arrived; its own task will process it
    if instance.status not in InstanceStatus.unfinished():
        return None  # a redelivered task whose work is already recorded
    instance.status = InstanceStatus.PROCESSING
    instance.started_at = utcnow()
    instance.attempts += 1
    return Claim(instance.id, instance.study_id, instance.receive_count, instance.spool_path, instance.attempts)


def finish(session: Session, work: Claim, outcome: Outcome) -> bool:
    """Record the outcome and the study's new score; False when a newer copy made this work stale."""
    instance = session.get(Instance, work.instance_id, with_for_update=True)
    if instance is None or instance.receive_count != work.receive_count:
        return False
    if outcome.score is not None:
        assert outcome.model_sha256 and outcome.model_version and outcome.threshold is not None
        _upsert_result(session, instance.id, outcome)
    instance.status = outcome.status
    instance.reason = outcome.reason
    instance.detail = outcome.detail
    instance.assumptions = outcome.assumptions
    instance.score = outcome.score
    instance.model_version = outcome.model_version
    instance.model_sha256 = outcome.model_sha256
    instance.preview_path = outcome.preview_path
    instance.heatmap_path = outcome.heatmap_path
    instance.display_path = outcome.display_path
    instance.finished_at = utcnow()
    session.flush()
    refresh_study(session, instance.study_id)
    return True


def _upsert_result(session: Session, instance_id: int, outcome: Outcome) -> None:
    query = select(Result).where(Result.instance_id == instance_id, Result.model_sha256 == outcome.model_sha256)
    result = session.scalars(query).first() or Result(instance_id=instance_id, model_sha256=outcome.model_sha256)
    result.model_version = outcome.model_version  # type: ignore[assignment]
    result.score = outcome.score  # type: ignore[assignment]
    result.threshold = outcome.threshold  # type: ignore[assignment]
    result.flag = outcome.score >= outcome.threshold  # type: ignore[operator]
    result.created_at = utcnow()
    session.add(result)


def refresh_study(session: Session, study_id: int) -> None:
    """Study score = highest score of its scored images; the flag follows that image's threshold."""
    study = session.get(Study, study_id, with_for_update=True)
    if study is None:
        return
    instances = session.scalars(select(Instance).where(Instance.study_id == study_id).order_by(Instance.id)).all()
    scored = [i for i in instances if i.status == InstanceStatus.DONE and i.score is not None]
    pending = any(i.status in InstanceStatus.unfinished() for i in instances)
    best = max(scored, key=lambda i: i.score or 0.0) if scored else None
    threshold = None
    if best is not None:
        threshold = session.scalars(
            select(Result.threshold).where(Result.instance_id == best.id, Result.model_sha256 == best.model_sha256)
        ).first()
    flag = bool(best is not None and threshold is not None and best.score >= threshold)  # type: ignore[operator]
    if flag and not (study.flag and study.flag_raised_at is not None):
        study.flag_raised_at = utcnow()  # a new flag: it goes to the top of the unread flagged studies
    elif not flag:
        study.flag_raised_at = None
    study.score = best.score if best else None
    study.threshold = threshold
    study.flag = flag
    study.model_version = best.model_version if best else None
    study.model_sha256 = best.model_sha256 if best else None
    if pending or not instances:
        study.status = StudyStatus.PENDING
        study.reason = None
        return
    if best is not None:
        study.status, study.reason = StudyStatus.DONE, None
    else:
        study.status = StudyStatus.NOT_ANALYSED
        study.reason = next((i.reason for i in instances if i.reason), None)
    study.flagged_at = utcnow()
    study.report_due = True  # a final result: the reporter sends a new version after the quiet period if it changed
    # Receive→result latency from the study's latest receive: a copy resent hours later measures the system,
    # not the hours in between.
    latest = max((as_utc(i.received_at) for i in instances), default=None)
    study.time_to_flag_s = max(0.0, (study.flagged_at - latest).total_seconds()) if latest else None


def stranded(session: Session, *, received_before: datetime, started_before: datetime,
             queued_before: datetime | None = None, limit: int = 500) -> list[WorkItem]:
    """Committed instances nobody is working on (outbox): never queued, queued before ``queued_before`` (default
    ``started_before``; ``datetime.min`` leaves queued ones out), or claimed before ``started_before``."""
    queued_before = started_before if queued_before is None else queued_before
    query = (
        select(Instance.id, Instance.receive_count, Instance.attempts)
        .where(
            or_(
                and_(Instance.status == InstanceStatus.RECEIVED, Instance.received_at < received_before),
                and_(Instance.status == InstanceStatus.QUEUED, Instance.enqueued_at < queued_before),
                and_(Instance.status == InstanceStatus.PROCESSING, Instance.started_at < started_before),
            )
        )
        .order_by(Instance.id)
        .limit(limit)
    )
    return [WorkItem(row.id, row.receive_count, row.attempts) for row in session.execute(query)]


def queued_count(session: Session) -> int:
    """Instances whose task was published and not yet claimed."""
    return session.scalar(select(func.count()).select_from(Instance)
                          .where(Instance.status == InstanceStatus.QUEUED)) or 0


def record_association_refusal(session: Session, *, reason: str, calling_ae: str, called_ae: str, peer: str
                                ) -> None:
    """An association refused before any C-STORE (``reason``: dicom_io.listener's refusal code)."""
    session.add(AssociationRefusal(reason=reason, calling_ae=calling_ae[:16], called_ae=called_ae[:16],
                                   peer=peer[:64]))


def record_rejection(session: Session, *, calling_ae: str, peer: str, status: int, reason: str,
                     payload_path: str | None, size_bytes: int) -> None:
    """A C-STORE or import refused with a failure status (the payload kept at ``payload_path``, where it was)."""
    session.add(Rejection(calling_ae=calling_ae, peer=peer, status=status, reason=reason,
                          payload_path=payload_path, size_bytes=size_bytes))


"""Every read and write the other packages do, as functions on a Session (callers own the transaction)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from db.models import Instance, InstanceStatus, ModelVersion, Rejection, Result, Study, StudyStatus, utcnow


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


@dataclass(frozen=True)
class WorkItem:
    """An instance as the outbox knows it: the receive_count tells a stale task from the current one."""

    instance_id: int
    receive_count: int


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
        reason=None,
        detail=None,
        assumptions=None,
        enqueued_at=None,
        started_at=None,
        finished_at=None,
    )
    if instance is None:
        instance = Instance(sop_instance_uid=record.sop_instance_uid, receive_count=1, attempts=0, **fields)
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
    """Note that a task was published, unless a worker got there first or a newer copy arrived."""
    session.execute(
        update(Instance)
        .where(Instance.id == item.instance_id, Instance.receive_count == item.receive_count,
               Instance.status.in_([InstanceStatus.RECEIVED, InstanceStatus.QUEUED]))
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
    study.score = best.score if best else None
    study.threshold = threshold
    study.flag = bool(best is not None and threshold is not None and best.score >= threshold)  # type: ignore[operator]
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


def stranded(session: Session, *, received_before: datetime, started_before: datetime, limit: int = 500
             ) -> list[WorkItem]:
    """Committed instances nobody is working on: never queued, or queued/claimed too long ago (outbox)."""
    query = (
        select(Instance.id, Instance.receive_count)
        .where(
            or_(
                and_(Instance.status == InstanceStatus.RECEIVED, Instance.received_at < received_before),
                and_(Instance.status == InstanceStatus.QUEUED, Instance.enqueued_at < started_before),
                and_(Instance.status == InstanceStatus.PROCESSING, Instance.started_at < started_before),
            )
        )
        .order_by(Instance.id)
        .limit(limit)
    )
    return [WorkItem(row.id, row.receive_count) for row in session.execute(query)]


def register_model(session: Session, *, sha256: str, version: str, trained: bool, threshold: float,
                   metadata: dict[str, Any]) -> None:
    model = session.get(ModelVersion, sha256) or ModelVersion(sha256=sha256, registered_at=utcnow())
    model.version, model.trained, model.threshold, model.metadata_json = version, trained, threshold, metadata
    session.add(model)


def record_rejection(session: Session, *, calling_ae: str, peer: str, status: int, reason: str,
                     payload_path: str | None, size_bytes: int) -> None:
    session.add(Rejection(calling_ae=calling_ae, peer=peer, status=status, reason=reason,
                          payload_path=payload_path, size_bytes=size_bytes))


# --- reading the worklist ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistEntry:
    study_uid: str
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: date | None
    study_description: str
    status: str
    flag: bool
    score: float | None
    threshold: float | None
    reason: str | None
    model_version: str | None
    model_sha256: str | None
    model_trained: bool | None
    received_at: datetime
    flagged_at: datetime | None
    images: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("received_at", "flagged_at", "study_date"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        return data


def worklist(session: Session, *, status: str | None = None, flagged: bool | None = None,
             limit: int = 200, offset: int = 0) -> list[WorklistEntry]:
    """Flagged studies first (highest score first), then everything else in arrival order."""
    images = (select(func.count(Instance.id)).where(Instance.study_id == Study.id).correlate(Study)
              .scalar_subquery())
    query = (
        select(Study, images.label("images"), ModelVersion.trained)
        .outerjoin(ModelVersion, ModelVersion.sha256 == Study.model_sha256)
        .order_by(Study.flag.desc(), case((Study.flag, Study.score), else_=None).desc(),
                  Study.received_at.asc(), Study.id.asc())
        .limit(limit)
        .offset(offset)
    )
    if status:
        query = query.where(Study.status == StudyStatus(status.upper()))
    if flagged is not None:
        query = query.where(Study.flag.is_(flagged))
    return [_entry(study, count, trained) for study, count, trained in session.execute(query)]


def _entry(study: Study, images: int, trained: bool | None) -> WorklistEntry:
    return WorklistEntry(
        study_uid=study.study_instance_uid,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_description=study.study_description,
        status=study.status.value,
        flag=study.flag,
        score=study.score,
        threshold=study.threshold,
        reason=study.reason,
        model_version=study.model_version,
        model_sha256=study.model_sha256,
        model_trained=trained,
        received_at=study.received_at,
        flagged_at=study.flagged_at,
        images=images,
    )


def study_detail(session: Session, study_uid: str) -> dict[str, Any] | None:
    """One study with its instances, or None."""
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_uid).options(selectinload(Study.instances))
    ).first()
    if study is None:
        return None
    trained = session.scalar(select(ModelVersion.trained).where(ModelVersion.sha256 == study.model_sha256))
    detail = _entry(study, len(study.instances), trained).to_dict()
    detail["instances"] = [
        {
            "sop_instance_uid": i.sop_instance_uid,
            "sop_class_uid": i.sop_class_uid,
            "series_instance_uid": i.series_instance_uid,
            "transfer_syntax_uid": i.transfer_syntax_uid,
            "view_position": i.view_position,
            "body_part": i.body_part,
            "status": i.status.value,
            "reason": i.reason,
            "detail": i.detail,
            "assumptions": i.assumptions,
            "score": i.score,
            "model_version": i.model_version,
            "model_sha256": i.model_sha256,
            "receive_count": i.receive_count,
            "received_at": i.received_at.isoformat(),
            "finished_at": i.finished_at.isoformat() if i.finished_at else None,
        }
        for i in study.instances
    ]
    return detail


def untrained_models_in_use(session: Session) -> bool:
    """True when any result on the worklist, or the newest registered model, is untrained."""
    newest = session.scalars(select(ModelVersion).order_by(ModelVersion.registered_at.desc())).first()
    if newest is not None and not newest.trained:
        return True
    used = select(Study.id).join(ModelVersion, ModelVersion.sha256 == Study.model_sha256).where(
        ModelVersion.trained.is_(False))
    return session.execute(used.limit(1)).first() is not None


def counts_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Instance.status, func.count()).group_by(Instance.status))
    return {status.value: count for status, count in rows}


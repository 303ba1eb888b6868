"""Every read and write the other packages do, as functions on a Session (callers own the transaction)."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from db.models import (
    AuditEvent,
    Instance,
    InstanceStatus,
    ModelVersion,
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
    preview_path: str | None = None  # PNG of the display image the model saw (worker.previews)
    heatmap_path: str | None = None  # PNG of the Grad-CAM overlay


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
    instance.preview_path = outcome.preview_path
    instance.heatmap_path = outcome.heatmap_path
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
        select(Instance.id, Instance.receive_count)
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
    return [WorkItem(row.id, row.receive_count) for row in session.execute(query)]


def queued_count(session: Session) -> int:
    """Instances whose task was published and not yet claimed."""
    return session.scalar(select(func.count()).select_from(Instance)
                          .where(Instance.status == InstanceStatus.QUEUED)) or 0


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


class WorklistStatus(str, enum.Enum):
    """What the worklist filters on. NOT_ANALYSED includes FAILED (nothing scorable); FAILED is the subset whose
    every image failed (no or unreadable pixels: the dead-letter record)."""

    PENDING = "PENDING"
    DONE = "DONE"
    NOT_ANALYSED = "NOT_ANALYSED"
    FAILED = "FAILED"


class WorklistSort(str, enum.Enum):
    """``priority`` is the triage order, built so that a new flag always reaches the first screen:

    1. unread flagged studies whose order is STAT, newest flag first;
    2. the other unread flagged studies, newest flag first (not by score: a long backlog of high scores must not
       bury a flag raised a minute ago);
    3. unread unflagged studies (not flagged, pending, not analysed): STAT orders first, then arrival order;
    4. read studies, in the same order among themselves.

    ``flagged_score`` is the earlier triage order: flagged first by highest score, then the rest in arrival order,
    read studies last in each of the two groups. The others are plain orders a reader may ask for."""

    PRIORITY = "priority"
    FLAGGED_SCORE = "flagged_score"
    RECEIVED_DESC = "received_desc"
    RECEIVED_ASC = "received_asc"
    SCORE_DESC = "score_desc"
    PATIENT = "patient"
    ACCESSION = "accession"


class OrderPriority(str, enum.Enum):
    """RequestedProcedurePriority's defined terms (db's own copy: it may not import dicom_io)."""

    STAT = "STAT"
    HIGH = "HIGH"
    ROUTINE = "ROUTINE"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class PatientSex(str, enum.Enum):
    M = "M"
    F = "F"
    O = "O"  # noqa: E741 (DICOM's own code for "other")


URGENT = OrderPriority.STAT.value  # the order priority that goes first in its group
DEFAULT_BORDERLINE_BAND = 0.05  # a score this far below the threshold, or less, is borderline


@dataclass(frozen=True)
class WorklistFilter:
    """What the page, the API and the CLI filter on; every criterion given must hold."""

    status: str | None = None  # a WorklistStatus value
    flagged: bool | None = None
    read: bool | None = None
    received_from: date | None = None  # days in ``zone``, both ends included
    received_to: date | None = None
    text: str | None = None  # every word must occur in patient name, patient ID or accession number
    zone: tzinfo = UTC  # the site's time zone: where a day starts and ends
    modality: str | None = None  # CR, DX… (case ignored)
    sex: str | None = None  # M, F or O
    priority: str | None = None  # an OrderPriority value
    age_min: int | None = None  # years, both ends included; a study of unknown age matches no age bound
    age_max: int | None = None
    institution: str | None = None  # part of the institution name (case ignored)


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
    state: str  # pending, done, not_analysed or failed (what the page shows)
    failed_images: int
    time_to_flag_s: float | None
    read_at: datetime | None
    read_by: str | None
    patient_age_years: int | None = None
    patient_sex: str | None = None
    modality: str | None = None
    institution: str | None = None
    station: str | None = None
    priority: str | None = None
    borderline: bool = False  # not flagged, but within the borderline band below the threshold
    outside_validated_population: bool | None = None  # None: age unknown, or the model records no population
    outside_validated_population_reason: str | None = None
    waiting_seconds: float | None = None  # unread: seconds since it was received; None once read

    @property
    def read(self) -> bool:
        return self.read_at is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("received_at", "flagged_at", "study_date", "read_at"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        data["read"] = self.read
        return data


def _like_escape(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _image_counts() -> tuple[Any, Any]:
    images = (select(func.count(Instance.id)).where(Instance.study_id == Study.id).correlate(Study)
              .scalar_subquery())
    failed = (select(func.count(Instance.id))
              .where(Instance.study_id == Study.id, Instance.status == InstanceStatus.FAILED)
              .correlate(Study).scalar_subquery())
    return images, failed


def _apply_filter(query: Any, filters: WorklistFilter, images: Any, failed: Any) -> Any:
    if filters.status:
        status = WorklistStatus(filters.status.upper())
        if status is WorklistStatus.FAILED:
            query = query.where(Study.status == StudyStatus.NOT_ANALYSED, failed == images)
        else:
            query = query.where(Study.status == StudyStatus(status.value))
    if filters.flagged is not None:
        query = query.where(Study.flag.is_(filters.flagged))
    if filters.read is not None:
        query = query.where(Study.read_at.is_not(None) if filters.read else Study.read_at.is_(None))
    if filters.received_from is not None and (start := _day_start(filters.received_from, filters.zone)):
        query = query.where(Study.received_at >= start)
    if filters.received_to is not None and filters.received_to < date.max and (
            end := _day_start(filters.received_to + timedelta(days=1), filters.zone)):
        query = query.where(Study.received_at < end)
    for word in (filters.text or "").split():
        pattern = f"%{_like_escape(word)}%"
        query = query.where(or_(*(column.ilike(pattern, escape="\\") for column in
                                  (Study.patient_name, Study.patient_id, Study.accession_number))))
    return _apply_context_filter(query, filters)


def _apply_context_filter(query: Any, filters: WorklistFilter) -> Any:
    """Modality, sex, priority, age range and institution (a study that does not say matches none of them)."""
    if filters.modality and filters.modality.strip():
        query = query.where(func.upper(Study.modality) == filters.modality.strip().upper())
    if filters.sex and filters.sex.strip():
        query = query.where(Study.patient_sex == filters.sex.strip().upper())
    if filters.priority and filters.priority.strip():
        query = query.where(Study.priority == filters.priority.strip().upper())
    if filters.age_min is not None:
        query = query.where(Study.patient_age_years >= filters.age_min)
    if filters.age_max is not None:
        query = query.where(Study.patient_age_years <= filters.age_max)
    if filters.institution and filters.institution.strip():
        pattern = f"%{_like_escape(filters.institution.strip())}%"
        query = query.where(Study.institution.ilike(pattern, escape="\\"))
    return query


def _day_start(day: date, zone: tzinfo) -> datetime | None:
    """When ``day`` begins in ``zone``, in UTC (what the columns hold); None past the calendar's ends."""
    try:
        return datetime.combine(day, time.min, zone).astimezone(UTC)
    except OverflowError:
        return None


def _triage_order() -> list[Any]:
    """WorklistSort.PRIORITY: unread before read; in each, flagged STAT, other flagged (newest flag first),
    unflagged STAT, other unflagged (arrival order)."""
    read_last = case((Study.read_at.is_(None), 0), else_=1)
    urgent = Study.priority == URGENT
    group = case((and_(Study.flag, urgent), 0), (Study.flag, 1), (urgent, 2), else_=3)
    newest_flag = case((Study.flag, func.coalesce(Study.flag_raised_at, Study.flagged_at, Study.received_at)),
                       else_=None)
    return [read_last.asc(), group.asc(), newest_flag.desc().nulls_last(), Study.received_at.asc(), Study.id.asc()]


def _order(sort: WorklistSort) -> list[Any]:
    arrival = [Study.received_at.asc(), Study.id.asc()]
    if sort is WorklistSort.PRIORITY:
        return _triage_order()
    if sort is WorklistSort.FLAGGED_SCORE:
        unread_first = case((Study.read_at.is_(None), 0), else_=1)
        return [Study.flag.desc(), unread_first.asc(), case((Study.flag, Study.score), else_=None).desc(), *arrival]
    if sort is WorklistSort.RECEIVED_DESC:
        return [Study.received_at.desc(), Study.id.desc()]
    if sort is WorklistSort.SCORE_DESC:
        return [Study.score.desc().nulls_last(), *arrival]
    if sort is WorklistSort.PATIENT:
        return [Study.patient_name.asc(), Study.patient_id.asc(), *arrival]
    if sort is WorklistSort.ACCESSION:
        return [Study.accession_number.asc(), *arrival]
    return arrival


@dataclass(frozen=True)
class _Judgement:
    """What an entry's derived fields need besides its row: the borderline band, each model's validated
    population (and the newest model's, for studies without a result yet) and the time now."""

    band: float
    populations: dict[str, dict[str, Any]]
    default_population: dict[str, Any]
    now: datetime

    def population(self, model_sha256: str | None) -> dict[str, Any]:
        return self.populations.get(model_sha256, {}) if model_sha256 else self.default_population


def newest_model(session: Session) -> ModelVersion | None:
    """The model registered last: the one the workers run now (a study nothing scored yet is judged by it)."""
    return session.scalars(select(ModelVersion).order_by(ModelVersion.registered_at.desc()).limit(1)).first()


def _judgement(session: Session, model_shas: set[str | None], band: float, now: datetime | None) -> _Judgement:
    latest = newest_model(session)
    newest = latest.sha256 if latest is not None else None
    wanted = {sha for sha in model_shas if sha} | ({newest} if newest else set())
    populations: dict[str, dict[str, Any]] = {}
    if wanted:
        for sha, metadata in session.execute(select(ModelVersion.sha256, ModelVersion.metadata_json)
                                             .where(ModelVersion.sha256.in_(wanted))):
            population = metadata.get("validated_population") if isinstance(metadata, dict) else None
            populations[str(sha)] = population if isinstance(population, dict) else {}
    return _Judgement(band, populations, populations.get(newest, {}) if newest else {}, now or utcnow())


def worklist(session: Session, filters: WorklistFilter | None = None, *,
             sort: str | WorklistSort = WorklistSort.PRIORITY, limit: int = 200, offset: int = 0,
             borderline_band: float = DEFAULT_BORDERLINE_BAND, now: datetime | None = None,
             **criteria: Any) -> list[WorklistEntry]:
    """The studies ``filters`` (or the WorklistFilter fields given as keywords) match, by default in the triage
    order (see WorklistSort). Filters combine with AND; the received days are days in the filter's zone."""
    filters = filters or WorklistFilter(**criteria)
    images, failed = _image_counts()
    query = (
        select(Study, images.label("images"), failed.label("failed"), ModelVersion.trained)
        .outerjoin(ModelVersion, ModelVersion.sha256 == Study.model_sha256)
        .order_by(*_order(WorklistSort(sort)))
        .limit(limit)
        .offset(offset)
    )
    rows: Sequence[Any] = session.execute(_apply_filter(query, filters, images, failed)).all()
    judgement = _judgement(session, {row[0].model_sha256 for row in rows}, borderline_band, now)
    return [_entry(study, count, failed_count, trained, judgement) for study, count, failed_count, trained in rows]


def worklist_total(session: Session, filters: WorklistFilter | None = None, **criteria: Any) -> int:
    """How many studies the same filters match (for paging)."""
    filters = filters or WorklistFilter(**criteria)
    images, failed = _image_counts()
    query = _apply_filter(select(func.count(Study.id)), filters, images, failed)
    return int(session.scalar(query) or 0)


def worklist_modalities(session: Session, limit: int = 50) -> list[str]:
    """The modalities the studies carry (upper case, sorted), for the page's modality filter."""
    column = func.upper(Study.modality)
    query = (select(column).where(Study.modality.is_not(None), Study.modality != "").group_by(column)
             .order_by(column).limit(limit))
    values: list[str] = list(session.scalars(query))
    return [value for value in values if value]


def _state(study: Study, images: int, failed: int) -> str:
    if study.status == StudyStatus.NOT_ANALYSED:
        return "failed" if images and failed == images else "not_analysed"
    return study.status.value.lower()


def is_borderline(score: float | None, threshold: float | None, band: float) -> bool:
    """Below the threshold by at most ``band`` (threshold - band <= score < threshold): not flagged, but close."""
    if score is None or threshold is None or band <= 0:
        return False
    return threshold - band <= score < threshold


def _age_range_text(name: str, low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return f"{name}: any age"
    if high is None:
        return f"{name}: {low:g} y and over"
    if low is None:
        return f"{name}: up to {high:g} y"
    return f"{name}: {low:g}–{high:g} y"


def _age_ranges(population: dict[str, Any]) -> list[tuple[str, float | None, float | None]] | None:
    """(name, lowest, highest age in years) of each validated population; None when any range is unknown."""
    ages = population.get("age_years")
    if not isinstance(ages, dict) or not ages:
        return None
    ranges = []
    for name, span in ages.items():
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and
                all(bound is None or (isinstance(bound, (int, float)) and not isinstance(bound, bool))
                    for bound in span)):
            return None  # a population of unknown ages might hold anyone: no verdict
        ranges.append((str(name), span[0], span[1]))
    return ranges


def outside_validated_population(age_years: int | None, population: dict[str, Any]
                                 ) -> tuple[bool | None, str | None]:
    """Whether a patient of this age lies outside every age range the model was validated on, and why; (None,
    None) when the age is unknown or the model records no usable age ranges."""
    ranges = _age_ranges(population) if age_years is not None else None
    if age_years is None or ranges is None:
        return None, None
    if any((low is None or age_years >= low) and (high is None or age_years <= high) for _, low, high in ranges):
        return False, None
    validated = "; ".join(_age_range_text(*entry) for entry in ranges)
    return True, f"age {age_years} y is outside the ages the model was validated on ({validated})"


def _entry(study: Study, images: int, failed: int, trained: bool | None, judgement: _Judgement) -> WorklistEntry:
    outside, outside_reason = outside_validated_population(study.patient_age_years,
                                                           judgement.population(study.model_sha256))
    received_at = as_utc(study.received_at)
    assert received_at is not None
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
        received_at=received_at,
        flagged_at=as_utc(study.flagged_at),
        images=images,
        state=_state(study, images, failed),
        failed_images=failed,
        time_to_flag_s=study.time_to_flag_s,
        read_at=as_utc(study.read_at),
        read_by=study.read_by,
        patient_age_years=study.patient_age_years,
        patient_sex=study.patient_sex,
        modality=study.modality,
        institution=study.institution,
        station=study.station,
        priority=study.priority,
        borderline=not study.flag and is_borderline(study.score, study.threshold, judgement.band),
        outside_validated_population=outside,
        outside_validated_population_reason=outside_reason,
        waiting_seconds=(None if study.read_at is not None
                         else max(0.0, (judgement.now - received_at).total_seconds())),
    )


def _version_token(session: Session, *values: Any) -> str:
    """A short hash of ``values`` and of the registered models (a new model changes every page's banner)."""
    models = session.execute(select(func.count(ModelVersion.sha256), func.max(ModelVersion.registered_at))).one()
    raw = "|".join(str(value) for value in (*values, *models))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def worklist_version(session: Session) -> str:
    """A short token that changes whenever anything the worklist shows may have changed (for live updates)."""
    studies = session.execute(select(func.count(Study.id), func.max(Study.updated_at))).one()
    instances = session.execute(select(func.count(Instance.id), func.max(Instance.received_at),
                                       func.max(Instance.finished_at), func.sum(Instance.receive_count))).one()
    return _version_token(session, *studies, *instances)


def study_version(session: Session, study_uid: str) -> str | None:
    """Like ``worklist_version`` for one study's page (its result, read state and each image's status); None when
    there is no such study."""
    study = session.execute(select(Study.id, Study.updated_at, Study.read_at, Study.read_by)
                            .where(Study.study_instance_uid == study_uid)).first()
    if study is None:
        return None
    instances = session.execute(
        select(Instance.sop_instance_uid, Instance.status, Instance.receive_count, Instance.finished_at)
        .where(Instance.study_id == study.id).order_by(Instance.sop_instance_uid)).all()
    return _version_token(session, *study, *(value for row in instances for value in row))


def study_exists(session: Session, study_uid: str) -> bool:
    return session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid)) is not None


def study_detail(session: Session, study_uid: str, *, borderline_band: float = DEFAULT_BORDERLINE_BAND,
                 now: datetime | None = None) -> dict[str, Any] | None:
    """One study with its instances (each with its own score, threshold and decision), or None."""
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_uid).options(selectinload(Study.instances))
    ).first()
    if study is None:
        return None
    trained = session.scalar(select(ModelVersion.trained).where(ModelVersion.sha256 == study.model_sha256))
    failed = sum(i.status == InstanceStatus.FAILED for i in study.instances)
    judgement = _judgement(session, {study.model_sha256}, borderline_band, now)
    detail = _entry(study, len(study.instances), failed, trained, judgement).to_dict()
    thresholds = dict(session.execute(
        select(Result.instance_id, Result.threshold)
        .join(Instance, and_(Instance.id == Result.instance_id, Instance.model_sha256 == Result.model_sha256))
        .where(Instance.study_id == study.id)).all())
    detail["instances"] = []
    for i in study.instances:
        threshold = thresholds.get(i.id) if i.score is not None else None
        detail["instances"].append({
            "sop_instance_uid": i.sop_instance_uid,
            "sop_class_uid": i.sop_class_uid,
            "series_instance_uid": i.series_instance_uid,
            "transfer_syntax_uid": i.transfer_syntax_uid,
            "modality": i.modality,
            "view_position": i.view_position,
            "body_part": i.body_part,
            "status": i.status.value,
            "reason": i.reason,
            "detail": i.detail,
            "assumptions": i.assumptions,
            "score": i.score,
            "threshold": threshold,
            "flag": bool(i.score is not None and threshold is not None and i.score >= threshold),
            "model_version": i.model_version,
            "model_sha256": i.model_sha256,
            "receive_count": i.receive_count,
            "received_at": as_utc(i.received_at).isoformat(),
            "finished_at": as_utc(i.finished_at).isoformat() if i.finished_at else None,
            "has_preview": bool(i.preview_path),
            "has_heatmap": bool(i.heatmap_path),
        })
    return detail


def instance_image_path(session: Session, study_uid: str, sop_instance_uid: str, kind: str) -> str | None:
    """The stored path of an instance's ``preview`` or ``heatmap`` PNG (None: no such instance in the study, or
    no such picture)."""
    column = {"preview": Instance.preview_path, "heatmap": Instance.heatmap_path}[kind]
    return session.scalar(
        select(column).join(Study, Study.id == Instance.study_id)
        .where(Study.study_instance_uid == study_uid, Instance.sop_instance_uid == sop_instance_uid))


def set_read(session: Session, study_uid: str, *, read: bool, actor: str) -> Study | None:
    """Mark a study read (it drops to the bottom of its group) or unread, and audit it; None: no such study."""
    study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid).with_for_update()).first()
    if study is None:
        return None
    if read and study.read_at is None:
        study.read_at, study.read_by = utcnow(), actor[:128]
    elif not read and study.read_at is not None:
        study.read_at, study.read_by = None, None
    record_audit(session, actor=actor, action="mark_read" if read else "mark_unread", study_uid=study_uid)
    session.flush()
    return study


def record_audit(session: Session, *, actor: str, action: str, study_uid: str | None = None,
                 detail: str | None = None) -> None:
    """One audit row: who (a token's name, never a patient), what, which study, when (now)."""
    session.add(AuditEvent(actor=actor[:128], action=action[:32], study_instance_uid=study_uid,
                           detail=detail[:512] if detail else None))


def audit_events(session: Session, *, study_uid: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if study_uid is not None:
        query = query.where(AuditEvent.study_instance_uid == study_uid)
    return [
        {"at": as_utc(e.at).isoformat(), "actor": e.actor, "action": e.action,
         "study_uid": e.study_instance_uid, "detail": e.detail}
        for e in session.scalars(query)
    ]


def untrained_models_in_use(session: Session) -> bool:
    """True when any result on the worklist, or the newest registered model, is untrained."""
    newest = newest_model(session)
    if newest is not None and not newest.trained:
        return True
    used = select(Study.id).join(ModelVersion, ModelVersion.sha256 == Study.model_sha256).where(
        ModelVersion.trained.is_(False))
    return session.execute(used.limit(1)).first() is not None


def model_versions(session: Session) -> list[dict[str, Any]]:
    """Every model that produced results, newest first, with how many studies currently carry its result."""
    in_use = dict(session.execute(select(Study.model_sha256, func.count(Study.id)).group_by(Study.model_sha256)).all())
    return [
        {
            "sha256": m.sha256,
            "version": m.version,
            "trained": m.trained,
            "threshold": m.threshold,
            "registered_at": as_utc(m.registered_at).isoformat(),
            "studies": int(in_use.get(m.sha256, 0)),
            "metadata": m.metadata_json,
        }
        for m in session.scalars(select(ModelVersion).order_by(ModelVersion.registered_at.desc()))
    ]


def counts_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Instance.status, func.count()).group_by(Instance.status))
    return {status.value: count for status, count in rows}


# --- metrics (computed from the tables at scrape time: listener, worker and web are separate processes) -------


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
    failed: dict[str, int] = {}
    for reason, count in session.execute(select(Instance.reason, func.count(Instance.id))
                                         .where(Instance.status == InstanceStatus.FAILED).group_by(Instance.reason)):
        failed[reason or "UNKNOWN"] = failed.get(reason or "UNKNOWN", 0) + int(count)
    latency = _histogram(session, Study.time_to_flag_s, latency_bounds).get(None)
    scores = _histogram(session, Result.score, score_bounds, group_by=Result.model_version)
    return MetricsSnapshot(received, counts_by_status(session), failed,
                           latency, {str(k): v for k, v in scores.items()}, untrained_models_in_use(session))

"""Reading the worklist: the studies a filter matches in the triage order (or another), one study with its images,
the live-update tokens, the pictures' paths, and the read mark. Functions on a Session: callers own the
transaction."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session, selectinload

from db.audit import record_audit
from db.model_registry import newest_model
from db.models import Instance, InstanceStatus, ModelVersion, Result, Study, StudyStatus, as_utc, utcnow


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


EVERY_STUDY = WorklistFilter()  # no criteria
UNREAD_FLAGGED = WorklistFilter(flagged=True, read=False)  # what the alerts count, on every page


@dataclass(frozen=True)
class WorklistEntry:
    """One study as the worklist shows it (the page, the API through ``worklist.schemas.WorklistItem``, the CLI)."""

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


@dataclass(frozen=True)
class InstanceRow:
    """One received image of a study and what became of it (its own score, threshold and decision)."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    view_position: str
    body_part: str
    status: str  # an InstanceStatus value
    reason: str | None
    detail: str | None
    assumptions: str | None
    score: float | None
    threshold: float | None
    flag: bool
    model_version: str | None
    model_sha256: str | None
    receive_count: int
    received_at: datetime
    finished_at: datetime | None
    has_preview: bool
    has_heatmap: bool
    has_display: bool
    purged_at: datetime | None  # when the retention policy removed its pictures (None: kept)


@dataclass(frozen=True)
class StudyDetail(WorklistEntry):
    """One study as its worklist row shows it, with every image received for it, in arrival order."""

    instances: tuple[InstanceRow, ...] = ()


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


def worklist(session: Session, filters: WorklistFilter = EVERY_STUDY, *,
             sort: str | WorklistSort = WorklistSort.PRIORITY, limit: int = 200, offset: int = 0,
             borderline_band: float = DEFAULT_BORDERLINE_BAND, now: datetime | None = None) -> list[WorklistEntry]:
    """The studies ``filters`` match, by default in the triage order (see WorklistSort). Filters combine with AND;
    the received days are days in the filter's zone."""
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
    return [WorklistEntry(**_entry_fields(study, count, failed_count, trained, judgement))
            for study, count, failed_count, trained in rows]


def worklist_total(session: Session, filters: WorklistFilter = EVERY_STUDY) -> int:
    """How many studies the same filters match (for paging)."""
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


def _entry_fields(study: Study, images: int, failed: int, trained: bool | None, judgement: _Judgement
                  ) -> dict[str, Any]:
    """A study's WorklistEntry fields (StudyDetail adds its images to the same)."""
    outside, outside_reason = outside_validated_population(study.patient_age_years,
                                                           judgement.population(study.model_sha256))
    received_at = as_utc(study.received_at)
    return dict(
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
    """Like ``worklist_version`` for one study's page (its result, read state, each image's status and whether
    retention removed its pictures); None when there is no such study."""
    study = session.execute(select(Study.id, Study.updated_at, Study.read_at, Study.read_by)
                            .where(Study.study_instance_uid == study_uid)).first()
    if study is None:
        return None
    instances = session.execute(
        select(Instance.sop_instance_uid, Instance.status, Instance.receive_count, Instance.finished_at,
               Instance.purged_at)
        .where(Instance.study_id == study.id).order_by(Instance.sop_instance_uid)).all()
    return _version_token(session, *study, *(value for row in instances for value in row))


def study_exists(session: Session, study_uid: str) -> bool:
    return session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid)) is not None


def study_detail(session: Session, study_uid: str, *, borderline_band: float = DEFAULT_BORDERLINE_BAND,
                 now: datetime | None = None) -> StudyDetail | None:
    """One study with its instances (each with its own score, threshold and decision), or None."""
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_uid).options(selectinload(Study.instances))
    ).first()
    if study is None:
        return None
    trained = session.scalar(select(ModelVersion.trained).where(ModelVersion.sha256 == study.model_sha256))
    failed = sum(i.status == InstanceStatus.FAILED for i in study.instances)
    judgement = _judgement(session, {study.model_sha256}, borderline_band, now)
    thresholds = dict(session.execute(
        select(Result.instance_id, Result.threshold)
        .join(Instance, and_(Instance.id == Result.instance_id, Instance.model_sha256 == Result.model_sha256))
        .where(Instance.study_id == study.id)).all())
    return StudyDetail(**_entry_fields(study, len(study.instances), failed, trained, judgement),
                       instances=tuple(_instance_row(i, thresholds.get(i.id)) for i in study.instances))


def _instance_row(instance: Instance, threshold: float | None) -> InstanceRow:
    """``threshold``: the one its current result was compared with (None unless it was scored)."""
    threshold = threshold if instance.score is not None else None
    return InstanceRow(
        sop_instance_uid=instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        series_instance_uid=instance.series_instance_uid,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        modality=instance.modality,
        view_position=instance.view_position,
        body_part=instance.body_part,
        status=instance.status.value,
        reason=instance.reason,
        detail=instance.detail,
        assumptions=instance.assumptions,
        score=instance.score,
        threshold=threshold,
        flag=bool(instance.score is not None and threshold is not None and instance.score >= threshold),
        model_version=instance.model_version,
        model_sha256=instance.model_sha256,
        receive_count=instance.receive_count,
        received_at=as_utc(instance.received_at),
        finished_at=as_utc(instance.finished_at),
        # A purged picture is gone, even while its path waits for retention to record the file deleted.
        has_preview=bool(instance.preview_path) and instance.purged_at is None,
        has_heatmap=bool(instance.heatmap_path) and instance.purged_at is None,
        has_display=bool(instance.display_path) and instance.purged_at is None,
        purged_at=as_utc(instance.purged_at),
    )


def instance_image_path(session: Session, study_uid: str, sop_instance_uid: str, kind: str) -> str | None:
    """The stored path of an instance's ``preview``, ``heatmap`` or full-resolution ``display`` PNG (None: no such
    instance in the study, no such picture, or the retention policy removed it: its path stays set until retention
    records the file deleted, and a crash may leave the file there meanwhile)."""
    column = {"preview": Instance.preview_path, "heatmap": Instance.heatmap_path,
              "display": Instance.display_path}[kind]
    return session.scalar(
        select(column).join(Study, Study.id == Instance.study_id)
        .where(Study.study_instance_uid == study_uid, Instance.sop_instance_uid == sop_instance_uid,
               Instance.purged_at.is_(None)))


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

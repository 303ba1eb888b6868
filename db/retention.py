"""Retention: which instances' pixels may go, marking them gone, recording their files deleted, and what the API
says about them afterwards.

An instance's pixels (the spooled DICOM copy and the preview, heat map and full-size PNGs) expire only when nothing
may still need them: the instance finished with a result that stands (DONE or NOT_ANALYSED; a FAILED one's spooled
copy is the only one a retry has), a radiologist has read its study (an unread study keeps its images however old),
it finished before the cutoff, and no report of its study is still waiting to be delivered (the SR is built from the
spooled headers and the heat map). The rows, results and audit trail stay. Functions on a Session: callers own the
transaction.

Marking (purged_at) comes first and is what every reader goes by; the paths stay until the files are deleted and a
second transaction records it (pixels_deleted_at, paths NULL). An instance marked but not recorded deleted is
pending: a crash or an undeletable file left files that the next pass still finds by their paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.orm import Session

from db.audit import record_audit
from db.models import Delivery, DeliveryStatus, Instance, InstanceStatus, Study, StudyReport, as_utc

# Only these outcomes stand: an unfinished instance is still being worked on, a FAILED one may be retried.
RETAINED_STATUSES = (InstanceStatus.DONE, InstanceStatus.NOT_ANALYSED)
# A delivery in these states may still be sent: its study keeps its pixels until it is delivered, dead or superseded
# (the SR is built from the spooled headers, the optional capture from the heat map).
WAITING_DELIVERIES = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)
AUDIT_ACTOR = "retention"
AUDIT_ACTION = "purge"


@dataclass(frozen=True)
class ExpiredInstance:
    """An instance whose pixels may be deleted, with where they lie (UIDs only: no patient data)."""

    instance_id: int
    sop_instance_uid: str
    study_instance_uid: str
    spool_path: str
    preview_path: str | None
    heatmap_path: str | None
    display_path: str | None

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the instance that retention deletes: the spooled copy first, then its pictures."""
        return tuple(path for path in (self.spool_path, self.preview_path, self.heatmap_path, self.display_path)
                     if path)


@dataclass(frozen=True)
class PendingInstance(ExpiredInstance):
    """An instance marked purged whose files were not all recorded deleted (a crash, a file that could not go)."""

    purged_at: datetime  # when it was marked: a file written after it is a re-sent copy, never the expired one


def _expired(cutoff: datetime, *, keep_report_due: bool) -> ColumnElement[bool]:
    """The whole rule as one condition, used to select and again to mark (a study marked unread, a new delivery or
    a re-sent copy between the two keeps its pixels). ``keep_report_due``: where results go back, a study waiting
    for its next report version keeps its pixels too (without a reporter that mark is never cleared)."""
    read_studies = select(Study.id).where(Study.read_at.is_not(None))
    waiting = (select(StudyReport.study_id).join(Delivery, Delivery.report_id == StudyReport.id)
               .where(Delivery.status.in_(WAITING_DELIVERIES)))
    condition = and_(Instance.status.in_(RETAINED_STATUSES), Instance.purged_at.is_(None),
                     Instance.finished_at.is_not(None), Instance.finished_at < cutoff,
                     Instance.study_id.in_(read_studies), Instance.study_id.not_in(waiting))
    if keep_report_due:
        condition = and_(condition, Instance.study_id.not_in(select(Study.id).where(Study.report_due.is_(True))))
    return condition


def expired(session: Session, *, cutoff: datetime, limit: int = 500, after_id: int = 0,
            keep_report_due: bool = False) -> list[ExpiredInstance]:
    """Up to ``limit`` expired instances with an id above ``after_id``, in id order (a batch; page on with the last
    id)."""
    rows = _page(session, _expired(cutoff, keep_report_due=keep_report_due), limit=limit, after_id=after_id)
    return [ExpiredInstance(*row) for row in rows]


def _page(session: Session, condition: ColumnElement[bool], *, limit: int, after_id: int,
          also: tuple[Any, ...] = ()) -> Sequence[Any]:
    """One batch of the instances meeting ``condition``, in id order after ``after_id``: the ExpiredInstance fields
    (then ``also``)."""
    return session.execute(
        select(Instance.id, Instance.sop_instance_uid, Study.study_instance_uid, Instance.spool_path,
               Instance.preview_path, Instance.heatmap_path, Instance.display_path, *also)
        .join(Study, Study.id == Instance.study_id)
        .where(Instance.id > after_id, condition)
        .order_by(Instance.id).limit(limit)).all()


def mark_purged(session: Session, instances: Sequence[ExpiredInstance], *, cutoff: datetime, now: datetime,
                days: int, keep_report_due: bool = False) -> list[ExpiredInstance]:
    """Record that these instances' pixels are gone for every reader (``purged_at`` = ``now``) and write one audit
    event with the counts. The paths stay, so that files a crash leaves behind are still found (``pending``); the
    rule is checked again here, so only the instances still expired are marked; those are returned, and only their
    files may be deleted."""
    by_id = {instance.instance_id: instance for instance in instances}
    if not by_id:
        return []
    marked = session.scalars(
        update(Instance)
        .where(Instance.id.in_(by_id), _expired(cutoff, keep_report_due=keep_report_due))
        .values(purged_at=now, pixels_deleted_at=None)
        .returning(Instance.id)
        .execution_options(synchronize_session=False)).all()
    purged = [by_id[instance_id] for instance_id in sorted(marked)]
    if purged:
        files = sum(len(instance.files) for instance in purged)
        record_audit(session, actor=AUDIT_ACTOR, action=AUDIT_ACTION,
                     detail=f"{len(purged)} instance(s) of read studies processed over {days} day(s) ago: "
                            f"{files} file(s) to delete")
    return purged


def _pending() -> ColumnElement[bool]:
    return and_(Instance.purged_at.is_not(None), Instance.pixels_deleted_at.is_(None))


def pending(session: Session, *, limit: int = 500, after_id: int = 0) -> list[PendingInstance]:
    """Up to ``limit`` instances marked purged whose files were not recorded deleted, with an id above ``after_id``,
    in id order (a batch, like ``expired``)."""
    rows = _page(session, _pending(), limit=limit, after_id=after_id, also=(Instance.purged_at,))
    return [_pending_instance(*row) for row in rows]


def _pending_instance(instance_id: int, sop_uid: str, study_uid: str, spool: str, preview: str | None,
                      heatmap: str | None, display: str | None, marked: datetime | None) -> PendingInstance:
    assert marked is not None  # selected by purged_at IS NOT NULL
    return PendingInstance(instance_id, sop_uid, study_uid, spool, preview, heatmap, display, as_utc(marked))


def mark_deleted(session: Session, instance_ids: Sequence[int], *, now: datetime) -> int:
    """Record that these purged instances' files are gone (or were a re-sent copy, kept): picture paths NULL,
    ``pixels_deleted_at`` = ``now``. Only pending rows change: a copy re-sent meanwhile cleared ``purged_at``, and
    its paths are its own. The number of rows changed."""
    if not instance_ids:
        return 0
    return len(session.scalars(
        update(Instance).where(Instance.id.in_(instance_ids), _pending())
        .values(preview_path=None, heatmap_path=None, display_path=None, pixels_deleted_at=now)
        .returning(Instance.id)
        .execution_options(synchronize_session=False)).all())


def purged_at(session: Session, study_uid: str, sop_instance_uid: str) -> datetime | None:
    """When retention removed this instance's pictures (None: kept, or no such instance in the study)."""
    return as_utc(session.scalar(
        select(Instance.purged_at).join(Study, Study.id == Instance.study_id)
        .where(Study.study_instance_uid == study_uid, Instance.sop_instance_uid == sop_instance_uid)))

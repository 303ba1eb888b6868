"""Retention of stored pixels (TRIAGE_RETENTION_DAYS): deletes the spooled DICOM copy and the preview, heat map and
full-size PNGs of read studies once they are old enough (the rule is ``db.retention``'s), so a site's disk does not
fill. Off by default. The ingest service runs it hourly; ``cxr-triage purge`` runs it once.

Each instance goes in three steps: it is marked purged (committed; from then on every reader treats its pictures as
gone), its files are deleted, and a second short transaction records them deleted (paths NULL, pixels_deleted_at).
The paths stay set until then, so a crash in between, or a file that could not be deleted, leaves the instance
pending, never a file nothing points at: each pass first finishes the pending instances (a copy a crash left
renamed aside included), then purges new ones. A file is deleted only if it is still the expired copy: spool and
picture paths are derived from the SOP Instance UID, so a copy re-sent while the purge runs lands on the same path,
and that copy (written after the cutoff, or after the mark for a pending instance) is put back, never deleted.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import retention
from worker.config import WorkerConfig
from worker.periodic import PeriodicTask

log = logging.getLogger(__name__)

BATCH_SIZE = 500  # instances marked per transaction
ASIDE_PREFIX = ".purging-"  # a file being deleted is first renamed to ASIDE_PREFIX + a random hex + "-" + its name


@dataclass(frozen=True)
class RetentionReport:
    """What one purge did (or, in a dry run, would do)."""

    days: int  # the retention used; 0 = off, nothing was looked at
    instances: int = 0  # newly expired instances marked purged by this pass
    files_removed: int = 0
    bytes_freed: int = 0
    files_not_removed: int = 0  # could not be deleted (logged), or a re-sent copy had taken the path
    resumed: int = 0  # instances an earlier pass marked but did not finish (a crash, an undeletable file)
    left_pending: int = 0  # instances with a file that could not be deleted: the next pass retries them
    dry_run: bool = False


class NewerCopy(Exception):
    """The path holds a copy written after the cutoff (a re-send): it is not the one that expired."""


def purge_expired(sessions: sessionmaker[Session], config: WorkerConfig, now: datetime | None = None,
                  dry_run: bool = False, *, keep_report_due: bool = False, batch_size: int = BATCH_SIZE,
                  stop: threading.Event | None = None) -> RetentionReport:
    """Delete the pixels of every instance expired under ``config.retention_days`` (nothing when it is 0), in
    batches until none is left (or ``stop`` is set), after finishing those an earlier pass left pending. ``dry_run``
    counts what would go and changes nothing. ``keep_report_due``: results go back to a PACS or RIS, so a study
    waiting for its report keeps its pixels."""
    days = config.retention_days
    if days <= 0:
        return RetentionReport(days=0, dry_run=dry_run)
    now = now or datetime.now(UTC)
    report = RetentionReport(days=days, dry_run=dry_run)
    report = _finish_pending(sessions, report, now, batch_size, stop)
    report = _purge_new(sessions, report, now, keep_report_due, batch_size, stop)
    if (report.instances or report.resumed) and not dry_run:
        log.info("retention (%d days): %d instance(s) purged, %d left by an earlier pass taken up, %d file(s) "
                 "deleted, %.1f MB freed, %d not deleted, %d instance(s) left for the next pass", days,
                 report.instances, report.resumed, report.files_removed, report.bytes_freed / 1e6,
                 report.files_not_removed, report.left_pending)
    return report


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _finish_pending(sessions: sessionmaker[Session], report: RetentionReport, now: datetime, batch_size: int,
                    stop: threading.Event | None) -> RetentionReport:
    """Take up the instances marked purged whose files were not recorded deleted: their paths are still set, so
    what a crash or a failed deletion left is found and deleted now. A file written after the mark is a re-sent
    copy, kept (the mark, not this pass's cutoff: a retention raised since must not turn the old copy into one)."""
    after_id = 0
    while not _stopped(stop):
        with sessions.begin() as session:
            batch = retention.pending(session, limit=batch_size, after_id=after_id)
        if not batch:
            break
        after_id = batch[-1].instance_id
        report = _delete_batch(sessions, [(instance, instance.purged_at) for instance in batch], report, now,
                               resumed=True)
        report = replace(report, resumed=report.resumed + len(batch))
    return report


def _purge_new(sessions: sessionmaker[Session], report: RetentionReport, now: datetime, keep_report_due: bool,
               batch_size: int, stop: threading.Event | None) -> RetentionReport:
    """Mark each batch of newly expired instances purged (committed first, so no reader links a file being
    deleted), then delete their files."""
    cutoff = now - timedelta(days=report.days)
    after_id = 0
    while not _stopped(stop):
        with sessions.begin() as session:
            batch = retention.expired(session, cutoff=cutoff, limit=batch_size, after_id=after_id,
                                      keep_report_due=keep_report_due)
            if not batch:
                break
            after_id = batch[-1].instance_id
            if not report.dry_run:
                batch = retention.mark_purged(session, batch, cutoff=cutoff, now=now, days=report.days,
                                              keep_report_due=keep_report_due)
        report = _delete_batch(sessions, [(instance, cutoff) for instance in batch], report, now)
        report = replace(report, instances=report.instances + len(batch))
    return report


def _delete_batch(sessions: sessionmaker[Session], batch: Sequence[tuple[retention.ExpiredInstance, datetime]],
                  report: RetentionReport, now: datetime, *, resumed: bool = False) -> RetentionReport:
    """Delete the files of each (instance, cutoff), then record in one short transaction the instances whose files
    are all gone or were a re-sent copy (kept): an instance with a file that could not be deleted stays pending, so
    its path is still there for the next pass."""
    done = []
    for instance, cutoff in batch:
        report, finished = _delete_files(instance, cutoff, report, resumed=resumed)
        if finished:
            done.append(instance.instance_id)
        else:
            report = replace(report, left_pending=report.left_pending + 1)
    if done and not report.dry_run:
        with sessions.begin() as session:
            retention.mark_deleted(session, done, now=now)
    return report


def _delete_files(instance: retention.ExpiredInstance, cutoff: datetime, report: RetentionReport, *,
                  resumed: bool = False) -> tuple[RetentionReport, bool]:
    """Delete (or, in a dry run, measure) one instance's files; a failure is logged with UIDs only and counted.
    Also whether every file is handled (gone, or a re-sent copy kept): False when one could not be deleted.
    ``resumed``: an earlier pass may have crashed with a file renamed aside; those copies are settled too."""
    removed = freed = kept = failed = 0
    for name in instance.files:
        path = Path(name)
        for target in (path, *(_left_aside(path) if resumed else ())):
            try:
                size = _delete_one(target, path, cutoff, report.dry_run)
            except NewerCopy:
                log.warning("retention: instance %d (SOP %s): a newer copy is at %s; kept", instance.instance_id,
                            instance.sop_instance_uid, path.name)
                kept += 1
                continue
            except OSError as exc:
                log.warning("retention: instance %d (SOP %s): %s not deleted (%s)", instance.instance_id,
                            instance.sop_instance_uid, target.name, exc.strerror or type(exc).__name__)
                failed += 1
                continue
            if size is not None:
                removed, freed = removed + 1, freed + size
    report = replace(report, files_removed=report.files_removed + removed, bytes_freed=report.bytes_freed + freed,
                     files_not_removed=report.files_not_removed + kept + failed)
    return report, failed == 0


def _left_aside(path: Path) -> list[Path]:
    """Copies of ``path`` that a pass cut short left renamed aside (neither deleted nor put back)."""
    length = len(ASIDE_PREFIX) + 32 + 1 + len(path.name)  # the random part is a uuid4's 32 hex digits
    return sorted(aside for aside in path.parent.glob(f"{ASIDE_PREFIX}*-{glob.escape(path.name)}")
                  if len(aside.name) == length)


def _delete_one(target: Path, path: Path, cutoff: datetime, dry_run: bool) -> int | None:
    """Delete ``path``, or ``target``, a copy of it left aside (measure it, in a dry run): see _remove_expired_file."""
    if dry_run:
        return _measure(target, cutoff)
    if target == path:
        return _remove_expired_file(path, cutoff)
    return _settle(target, path, cutoff)


def _measure(path: Path, cutoff: datetime) -> int | None:
    """The bytes deleting ``path`` would free (None: nothing there); NewerCopy when it would be kept."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if info.st_mtime >= cutoff.timestamp():
        raise NewerCopy(path.name)
    return info.st_size


def _remove_expired_file(path: Path, cutoff: datetime) -> int | None:
    """Delete ``path`` if it was written before ``cutoff``; the bytes freed, or None when it was already gone.

    The file is first renamed aside (atomic), so what is examined and deleted is exactly what was taken: a copy that
    a re-send writes to the path meanwhile stays where it is. A file written after the cutoff is that re-send's
    copy: it goes back (never over a yet newer one) and NewerCopy is raised."""
    aside = path.with_name(f"{ASIDE_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    return _settle(aside, path, cutoff)


def _settle(aside: Path, path: Path, cutoff: datetime) -> int | None:
    """Delete the copy of ``path`` set aside if it was written before ``cutoff`` (the bytes freed; None when it is
    gone already); else put it back and raise NewerCopy."""
    try:
        info = aside.stat()
        if info.st_mtime < cutoff.timestamp():
            aside.unlink()
            return info.st_size
    except FileNotFoundError:
        return None  # settled meanwhile by a purge run beside this one
    except OSError:
        _put_back(aside, path)
        raise
    _put_back(aside, path)
    raise NewerCopy(path.name)


def _put_back(aside: Path, path: Path) -> None:
    """Return a file set aside to its path, unless a newer copy has taken the path since (the one set aside is then
    superseded, as any duplicate's earlier copy is)."""
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        if not path.exists():
            os.rename(aside, path)
            return
    aside.unlink()


class RetentionSweeper:
    """Purges expired pixels in a thread of the ingest service: once at start, then every
    ``retention_interval_s``."""

    def __init__(self, config: WorkerConfig, sessions: sessionmaker[Session], *, keep_report_due: bool = False
                 ) -> None:
        self.config = config
        self.sessions = sessions
        self.keep_report_due = keep_report_due
        self._periodic = PeriodicTask("retention", config.retention_interval_s, lambda: self.run_once(),
                                      immediately=True, join_timeout_s=30)

    def run_once(self) -> RetentionReport:
        return purge_expired(self.sessions, self.config, keep_report_due=self.keep_report_due,
                             stop=self._periodic.stopping)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

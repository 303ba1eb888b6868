"""Retention of stored pixels (TRIAGE_RETENTION_DAYS): deletes the spooled DICOM copy and the preview, heat map and
full-size PNGs of read studies once they are old enough (the rule is ``db.retention``'s), so a site's disk does not
fill. Off by default. The ingest service runs it hourly; ``cxr-triage purge`` runs it once.

Rows are marked purged (and committed) before any file goes: a crash in between leaves files nobody points at, never
a row that points at a deleted file. A file is deleted only if it is still the expired copy: spool and picture paths
are derived from the SOP Instance UID, so a copy re-sent while the purge runs lands on the same path, and that copy
(written after the cutoff) is put back, never deleted.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import retention
from worker.config import WorkerConfig
from worker.periodic import PeriodicTask

log = logging.getLogger(__name__)

BATCH_SIZE = 500  # instances marked per transaction


@dataclass(frozen=True)
class RetentionReport:
    """What one purge did (or, in a dry run, would do)."""

    days: int  # the retention used; 0 = off, nothing was looked at
    instances: int = 0
    files_removed: int = 0
    bytes_freed: int = 0
    files_not_removed: int = 0  # could not be deleted (logged), or a re-sent copy had taken the path
    dry_run: bool = False


class NewerCopy(Exception):
    """The path holds a copy written after the cutoff (a re-send): it is not the one that expired."""


def purge_expired(sessions: sessionmaker[Session], config: WorkerConfig, now: datetime | None = None,
                  dry_run: bool = False, *, keep_report_due: bool = False, batch_size: int = BATCH_SIZE,
                  stop: threading.Event | None = None) -> RetentionReport:
    """Delete the pixels of every instance expired under ``config.retention_days`` (nothing when it is 0), in
    batches until none is left (or ``stop`` is set). ``dry_run`` counts what would go and changes nothing.
    ``keep_report_due``: results go back to a PACS or RIS, so a study waiting for its report keeps its pixels."""
    days = config.retention_days
    if days <= 0:
        return RetentionReport(days=0, dry_run=dry_run)
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=days)
    report = RetentionReport(days=days, dry_run=dry_run)
    after_id = 0
    while stop is None or not stop.is_set():
        with sessions.begin() as session:
            batch = retention.expired(session, cutoff=cutoff, limit=batch_size, after_id=after_id,
                                      keep_report_due=keep_report_due)
            if not batch:
                break
            after_id = batch[-1].instance_id
            if not dry_run:
                batch = retention.mark_purged(session, batch, cutoff=cutoff, now=now, days=days,
                                              keep_report_due=keep_report_due)
        for instance in batch:
            report = _delete_files(instance, cutoff, report, dry_run)
        report = replace(report, instances=report.instances + len(batch))
    if report.instances and not dry_run:
        log.info("retention (%d days): %d instance(s) purged, %d file(s) deleted, %.1f MB freed, %d not deleted",
                 days, report.instances, report.files_removed, report.bytes_freed / 1e6, report.files_not_removed)
    return report


def _delete_files(instance: retention.ExpiredInstance, cutoff: datetime, report: RetentionReport,
                  dry_run: bool) -> RetentionReport:
    """Delete (or, in a dry run, measure) one instance's files; a failure is logged with UIDs only and counted."""
    removed = freed = failed = 0
    for name in instance.files:
        path = Path(name)
        try:
            size = _measure(path, cutoff) if dry_run else _remove_expired_file(path, cutoff)
        except NewerCopy:
            log.warning("retention: instance %d (SOP %s): a newer copy is at %s; kept", instance.instance_id,
                        instance.sop_instance_uid, path.name)
            failed += 1
            continue
        except OSError as exc:
            log.warning("retention: instance %d (SOP %s): %s not deleted (%s)", instance.instance_id,
                        instance.sop_instance_uid, path.name, exc.strerror or type(exc).__name__)
            failed += 1
            continue
        if size is not None:
            removed, freed = removed + 1, freed + size
    return replace(report, files_removed=report.files_removed + removed, bytes_freed=report.bytes_freed + freed,
                   files_not_removed=report.files_not_removed + failed)


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
    aside = path.with_name(f".purging-{uuid.uuid4().hex}-{path.name}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    try:
        info = aside.stat()
        if info.st_mtime < cutoff.timestamp():
            aside.unlink()
            return info.st_size
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

"""Retention of stored pixels (db.retention, worker.retention, ``cxr-triage purge``, the API's 410) on SQLite and
PostgreSQL: a read study's old, finished images lose their spooled copy and pictures (the rows stay, marked), while
unread studies, FAILED and unfinished images, recent ones and studies whose report is still being delivered keep
theirs; a dry run changes nothing; a re-sent copy is live again and never deleted; a crash after the mark or a file
that cannot be deleted leaves the instance pending (gone for every reader, its paths kept) until a later pass
deletes its files."""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db import ingest, reports, retention
from db.models import AuditEvent, DeliveryStatus, Instance, InstanceStatus, Study, StudyReport, as_utc, utcnow
from db.worklist import set_read
from worker.config import WorkerConfig
from worker.retention import RetentionReport, RetentionSweeper, purge_expired

from db_records import MODEL, receive

DAYS = 30
SIZES = {"spool": 1000, "preview": 200, "heatmap": 300, "display": 5000}  # bytes: each file tells in the total
AUTH = {"Authorization": "Bearer s3cret"}


@dataclass(frozen=True)
class Stored:
    """One received image as the test left it on disk."""

    sop: str
    study: str
    files: tuple[Path, ...]

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def config(root: Path, days: int = DAYS) -> WorkerConfig:
    return WorkerConfig(database_url="", broker_url="filesystem://", spool_dir=root / "spool",
                        rejected_dir=root / "rejected", queue_dir=root / "queue", model_path=None,
                        model_cache_dir=root / "models", previews_dir=root / "previews", retention_days=days)


def _file(path: Path, kind: str, written: datetime) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * SIZES[kind])
    os.utime(path, (written.timestamp(), written.timestamp()))
    return path


def store(sessions: sessionmaker[Session], root: Path, sop: str, study: str, *,
          status: InstanceStatus = InstanceStatus.DONE, days_ago: float = 40, read: bool = True,
          finished: bool = True) -> Stored:
    """Receive ``sop``, process it ``days_ago`` days ago as the worker would (spool copy and pictures written then)
    and mark its study read (or not)."""
    written = utcnow() - timedelta(days=days_ago)
    spool = _file(root / "spool" / f"{sop}.dcm", "spool", written)
    item = receive(sessions, sop, study, spool_path=str(spool), size_bytes=SIZES["spool"])
    kinds = {InstanceStatus.DONE: ("preview", "heatmap", "display"),
             InstanceStatus.NOT_ANALYSED: ("preview", "display")}.get(status, ()) if finished else ()
    pictures = {f"{kind}_path": str(_file(root / "previews" / f"{sop}.{kind}.png", kind, written)) for kind in kinds}
    if finished:
        with sessions.begin() as session:
            work = ingest.claim(session, item.instance_id, item.receive_count)
        assert work is not None
        scored = dict(score=0.3, **MODEL) if status == InstanceStatus.DONE else {}
        reason = {InstanceStatus.NOT_ANALYSED: "LATERAL_VIEW", InstanceStatus.FAILED: "NO_PIXEL_DATA"}.get(status)
        with sessions.begin() as session:
            assert ingest.finish(session, work, ingest.Outcome(status, reason, **scored, **pictures))
            session.execute(update(Instance).where(Instance.id == item.instance_id).values(finished_at=written))
    with sessions.begin() as session:
        set_read(session, study, read=read, actor="dr-test")
    return Stored(sop, study, (spool, *(Path(path) for path in pictures.values())))


def row(sessions: sessionmaker[Session], sop: str) -> Instance:
    with sessions() as session:
        instance = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop)).one()
        session.expunge(instance)
    return instance


def assert_purged(sessions: sessionmaker[Session], image: Stored) -> None:
    assert not any(path.exists() for path in image.files), image.sop
    instance = row(sessions, image.sop)
    assert (instance.preview_path, instance.heatmap_path, instance.display_path) == (None, None, None)
    assert instance.purged_at is not None and instance.pixels_deleted_at is not None
    assert instance.spool_path == str(image.files[0])  # kept as the record of where the copy was
    assert instance.status in (InstanceStatus.DONE, InstanceStatus.NOT_ANALYSED)  # the result stays


def assert_pending(sessions: sessionmaker[Session], image: Stored, *, on_disk: tuple[Path, ...]) -> None:
    """Marked purged, its files not recorded deleted: the paths stay so that a later pass finds ``on_disk``."""
    assert [path for path in image.files if path.exists()] == list(on_disk), image.sop
    instance = row(sessions, image.sop)
    assert instance.purged_at is not None and instance.pixels_deleted_at is None
    assert [p for p in (instance.spool_path, instance.preview_path, instance.heatmap_path, instance.display_path)
            if p] == [str(path) for path in image.files]


def crash_after_marking(sessions: sessionmaker[Session], now: datetime | None = None) -> list[str]:
    """What a pass does before a crash cuts it short: the expired instances marked purged and committed; no file
    deleted. The SOP UIDs marked."""
    now = now or utcnow()
    cutoff = now - timedelta(days=DAYS)
    with sessions.begin() as session:
        marked = retention.mark_purged(session, retention.expired(session, cutoff=cutoff), cutoff=cutoff, now=now,
                                       days=DAYS)
    return [instance.sop_instance_uid for instance in marked]


def assert_kept(sessions: sessionmaker[Session], image: Stored) -> None:
    assert all(path.is_file() for path in image.files), image.sop
    instance = row(sessions, image.sop)
    assert instance.purged_at is None
    assert [p for p in (instance.preview_path, instance.heatmap_path, instance.display_path) if p] == \
        [str(path) for path in image.files[1:]]


def deliver(sessions: sessionmaker[Session], study_uid: str, status: DeliveryStatus) -> None:
    """A report version of the study with one delivery in ``status`` (as the reporter leaves it)."""
    with sessions.begin() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        result = reports.snapshot(session, study.id)
        assert result is not None
        report_id = reports.add_report(session, study_id=study.id, version=1, result=result,
                                       series_instance_uid=f"{study_uid}.9", sop_instance_uid=f"{study_uid}.9.1",
                                       files=[], destinations=[("dicom", "PACS@127.0.0.1:104")])
        report = session.get(StudyReport, report_id)
        assert report is not None
        report.deliveries[0].status = status


# --- the rule ---------------------------------------------------------------------------------------------------


def test_old_read_finished_images_lose_their_pixels_and_everything_else_keeps_them(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    done = store(sessions, tmp_path, "1.1", "s.1")
    lateral = store(sessions, tmp_path, "1.2", "s.1", status=InstanceStatus.NOT_ANALYSED)
    kept = [
        store(sessions, tmp_path, "2.1", "s.2", read=False),  # unread: however old
        store(sessions, tmp_path, "3.1", "s.3", status=InstanceStatus.FAILED),  # the only copy for a retry
        store(sessions, tmp_path, "4.1", "s.4", days_ago=DAYS - 1),  # not old enough
        store(sessions, tmp_path, "5.1", "s.5", finished=False),  # still being worked on
    ]
    expired_bytes = done.size + lateral.size
    report = purge_expired(sessions, config(tmp_path))
    assert report == RetentionReport(days=DAYS, instances=2, files_removed=len(done.files) + len(lateral.files),
                                     bytes_freed=expired_bytes)
    assert_purged(sessions, done)
    assert_purged(sessions, lateral)
    for image in kept:
        assert_kept(sessions, image)
    with sessions() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "purge")).all()
    assert [(e.actor, e.study_instance_uid) for e in events] == [("retention", None)]
    files = len(done.files) + len(lateral.files)
    assert events[0].detail is not None and f"2 instance(s) of read studies processed over {DAYS} day(s) ago: " \
        f"{files} file(s)" in events[0].detail
    assert "DOE" not in events[0].detail and "P1" not in events[0].detail  # counts only, never the patient
    again = purge_expired(sessions, config(tmp_path))
    assert again == RetentionReport(days=DAYS)  # nothing left to purge; nothing purged twice


def test_retention_is_off_by_default_and_batches_until_none_are_left(sessions: sessionmaker[Session],
                                                                     tmp_path: Path) -> None:
    images = [store(sessions, tmp_path, f"6.{n}", "s.6") for n in range(5)]
    off = replace(config(tmp_path), retention_days=WorkerConfig.retention_days)
    assert off.retention_days == 0 and purge_expired(sessions, off) == RetentionReport(days=0)
    for image in images:
        assert_kept(sessions, image)
    report = purge_expired(sessions, config(tmp_path), batch_size=2)
    assert report.instances == 5 and report.files_removed == sum(len(image.files) for image in images)
    for image in images:
        assert_purged(sessions, image)
    with sessions() as session:  # one audit event per batch marked
        assert len(session.scalars(select(AuditEvent).where(AuditEvent.action == "purge")).all()) == 3


@pytest.mark.parametrize("status, keeps", [(DeliveryStatus.PENDING, True), (DeliveryStatus.SENDING, True),
                                           (DeliveryStatus.DELIVERED, False), (DeliveryStatus.DEAD, False)])
def test_a_report_still_being_delivered_keeps_its_studys_pixels(
        sessions: sessionmaker[Session], tmp_path: Path, status: DeliveryStatus, keeps: bool) -> None:
    image = store(sessions, tmp_path, "7.1", "s.7")
    deliver(sessions, "s.7", status)
    report = purge_expired(sessions, config(tmp_path))
    assert report.instances == (0 if keeps else 1)
    (assert_kept if keeps else assert_purged)(sessions, image)


def test_where_reports_go_out_a_study_waiting_for_its_report_keeps_its_pixels(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    image = store(sessions, tmp_path, "8.1", "s.8")  # a final result: report_due until the reporter handles it
    assert purge_expired(sessions, config(tmp_path), keep_report_due=True).instances == 0
    assert_kept(sessions, image)
    with sessions.begin() as session:
        reports.clear_due(session, row(sessions, "8.1").study_id)
    assert purge_expired(sessions, config(tmp_path), keep_report_due=True).instances == 1
    assert_purged(sessions, image)


def test_a_dry_run_counts_what_would_go_and_changes_nothing(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    old = store(sessions, tmp_path, "9.1", "s.9")
    young = store(sessions, tmp_path, "9.2", "s.9b", days_ago=1)
    dry = purge_expired(sessions, config(tmp_path), dry_run=True)
    assert dry == RetentionReport(days=DAYS, instances=1, files_removed=len(old.files), bytes_freed=old.size,
                                  dry_run=True)
    assert_kept(sessions, old)
    assert_kept(sessions, young)
    with sessions() as session:
        assert session.scalars(select(AuditEvent).where(AuditEvent.action == "purge")).all() == []
    assert replace(purge_expired(sessions, config(tmp_path)), dry_run=True) == dry  # what it said is what it did


# --- re-sent copies and files that cannot go -------------------------------------------------------------------


def test_a_resent_instance_is_live_again(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    image = store(sessions, tmp_path, "10.1", "s.10")
    assert purge_expired(sessions, config(tmp_path)).instances == 1
    assert row(sessions, "10.1").purged_at is not None
    copy = _file(image.files[0], "spool", utcnow())  # the sender sends it again: same SOP UID, same spool path
    receive(sessions, "10.1", "s.10", spool_path=str(copy))
    resent = row(sessions, "10.1")
    assert resent.purged_at is None and resent.pixels_deleted_at is None and resent.status == InstanceStatus.RECEIVED
    assert purge_expired(sessions, config(tmp_path)).instances == 0  # new work: unfinished and unread
    assert copy.is_file()


def test_a_copy_resent_while_the_purge_runs_is_never_deleted(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    image = store(sessions, tmp_path, "11.1", "s.11")
    _file(image.files[0], "spool", utcnow())  # written now, on the expired copy's path, not yet committed
    report = purge_expired(sessions, config(tmp_path))
    assert (report.instances, report.files_removed, report.files_not_removed) == (1, len(image.files) - 1, 1)
    assert image.files[0].is_file() and image.files[0].stat().st_size == SIZES["spool"]
    assert not any(path.exists() for path in image.files[1:])
    assert not [p.name for p in image.files[0].parent.iterdir() if p.name.startswith(".purging-")]  # nothing left


def test_a_file_that_cannot_be_deleted_is_logged_with_uids_and_counted(
        sessions: sessionmaker[Session], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = store(sessions, tmp_path, "12.1", "s.12")
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with sessions.begin() as session:  # a path whose parent is a file: no rename or delete can work there
        session.execute(update(Instance).where(Instance.sop_instance_uid == "12.1")
                        .values(preview_path=str(blocker / "preview.png")))
    with caplog.at_level(logging.WARNING, logger="worker.retention"):
        report = purge_expired(sessions, config(tmp_path))
    assert (report.instances, report.files_not_removed, report.files_removed) == (1, 1, len(image.files) - 1)
    assert report.left_pending == 1 and row(sessions, "12.1").purged_at is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "12.1" in warnings[0] and "preview.png" in warnings[0]
    assert not any(word in caplog.text for word in ("DOE", "JANE", "P1", "A1"))


# --- a pass cut short: the next one finishes it ------------------------------------------------------------------


def test_a_crash_after_the_mark_is_finished_by_the_next_pass(sessions: sessionmaker[Session], tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    crashed = store(sessions, tmp_path, "17.1", "s.17")
    assert crash_after_marking(sessions) == ["17.1"]
    assert_pending(sessions, crashed, on_disk=crashed.files)
    with sessions() as session:  # the report no longer reads the header or the heat map of a purged image
        result = reports.snapshot(session, row(sessions, "17.1").study_id)
    assert result is not None and [(i.spool_path, i.heatmap_path) for i in result.images] == [(None, None)]
    later = store(sessions, tmp_path, "17.2", "s.17b")  # expired since: the same pass purges it
    size = crashed.size
    dry = purge_expired(sessions, config(tmp_path), dry_run=True)
    assert dry == RetentionReport(days=DAYS, instances=1, resumed=1, bytes_freed=size + later.size, dry_run=True,
                                  files_removed=len(crashed.files) + len(later.files))
    assert_pending(sessions, crashed, on_disk=crashed.files)  # the dry run changed nothing
    assert_kept(sessions, later)
    later_size = later.size
    with caplog.at_level(logging.INFO, logger="worker.retention"):
        report = purge_expired(sessions, config(tmp_path))
    assert replace(report, dry_run=True) == dry
    assert_purged(sessions, crashed)
    assert_purged(sessions, later)
    assert report.bytes_freed == size + later_size
    summary = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(summary) == 1 and "1 instance(s) purged, 1 left by an earlier pass taken up" in summary[0]
    assert not any(word in caplog.text for word in ("DOE", "JANE", "P1", "A1"))
    assert purge_expired(sessions, config(tmp_path)) == RetentionReport(days=DAYS)  # nothing pending any more


def test_a_copy_a_crash_left_renamed_aside_is_settled_by_the_next_pass(sessions: sessionmaker[Session],
                                                                        tmp_path: Path) -> None:
    image = store(sessions, tmp_path, "22.1", "s.22")
    marked = utcnow() - timedelta(minutes=5)
    assert crash_after_marking(sessions, now=marked) == ["22.1"]
    spool, preview = image.files[:2]
    expired = spool.rename(spool.with_name(f".purging-{'a' * 32}-{spool.name}"))  # cut short before its deletion
    resent = preview.rename(preview.with_name(f".purging-{'b' * 32}-{preview.name}"))  # a re-send's, set aside
    os.utime(resent, (utcnow().timestamp(), utcnow().timestamp()))
    other = spool.with_name(f".purging-{'c' * 32}-other-{spool.name}")  # another file's copy, not this one's
    bystander = _file(other, "spool", utcnow() - timedelta(days=40))
    report = purge_expired(sessions, config(tmp_path))
    assert (report.resumed, report.left_pending) == (1, 0)
    assert (report.files_removed, report.files_not_removed) == (len(image.files) - 1, 1)
    assert not expired.exists() and not resent.exists() and bystander.is_file()
    assert preview.is_file() and preview.stat().st_size == SIZES["preview"]  # put back where it was
    instance = row(sessions, "22.1")
    assert instance.pixels_deleted_at is not None and instance.preview_path is None


def test_a_pending_instance_is_finished_even_after_the_retention_was_raised(sessions: sessionmaker[Session],
                                                                            tmp_path: Path) -> None:
    image = store(sessions, tmp_path, "21.1", "s.21")  # 40 days old, marked under 30 days
    assert crash_after_marking(sessions) == ["21.1"]
    report = purge_expired(sessions, config(tmp_path, days=60))  # its files are younger than the new cutoff
    assert (report.resumed, report.files_removed, report.files_not_removed) == (1, len(image.files), 0)
    assert_purged(sessions, image)


def test_a_file_that_cannot_be_deleted_keeps_its_instance_pending_until_a_pass_deletes_it(
        sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = store(sessions, tmp_path, "18.1", "s.18")
    stuck = image.files[2]  # the heat map
    rename = os.rename

    def refuse_stuck(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if Path(source) == stuck:
            raise PermissionError(errno.EACCES, "Permission denied", str(source))
        rename(source, target)

    monkeypatch.setattr(os, "rename", refuse_stuck)
    first = purge_expired(sessions, config(tmp_path))
    assert (first.instances, first.resumed, first.left_pending) == (1, 0, 1)
    assert (first.files_removed, first.files_not_removed) == (len(image.files) - 1, 1)
    assert_pending(sessions, image, on_disk=(stuck,))
    second = purge_expired(sessions, config(tmp_path))  # still refused: retried, still pending, nothing counted twice
    assert second == RetentionReport(days=DAYS, resumed=1, files_not_removed=1, left_pending=1)
    assert_pending(sessions, image, on_disk=(stuck,))
    monkeypatch.setattr(os, "rename", rename)
    third = purge_expired(sessions, config(tmp_path))
    assert third == RetentionReport(days=DAYS, resumed=1, files_removed=1, bytes_freed=SIZES["heatmap"])
    assert_purged(sessions, image)


def test_a_copy_resent_to_a_pending_instance_is_never_deleted(sessions: sessionmaker[Session],
                                                               tmp_path: Path) -> None:
    image = store(sessions, tmp_path, "19.1", "s.19")
    assert crash_after_marking(sessions, now=utcnow() - timedelta(minutes=5)) == ["19.1"]
    _file(image.files[0], "spool", utcnow())  # re-sent after the mark, its row not committed yet
    report = purge_expired(sessions, config(tmp_path))
    assert (report.resumed, report.files_removed, report.files_not_removed, report.left_pending) == \
        (1, len(image.files) - 1, 1, 0)
    assert image.files[0].is_file() and not any(path.exists() for path in image.files[1:])
    receive(sessions, "19.1", "s.19", spool_path=str(image.files[0]))  # its row: live again
    resent = row(sessions, "19.1")
    assert (resent.purged_at, resent.pixels_deleted_at, resent.status) == (None, None, InstanceStatus.RECEIVED)
    assert purge_expired(sessions, config(tmp_path)) == RetentionReport(days=DAYS)
    assert image.files[0].is_file()


def test_the_ingest_service_runs_retention_only_when_it_is_set(sessions: sessionmaker[Session],
                                                               database_url: str, tmp_path: Path) -> None:
    from worker.ingest_service import IngestService

    for days, expected in ((0, False), (DAYS, True)):
        service = IngestService(replace(config(tmp_path, days), database_url=database_url))
        try:
            assert (service.retention is not None) == expected
        finally:
            service.stop()
    image = store(sessions, tmp_path, "13.1", "s.13")
    sweeper = RetentionSweeper(config(tmp_path), sessions)
    passes: list[RetentionReport] = []
    first_pass = threading.Event()
    run_once = sweeper.run_once

    def counted() -> RetentionReport:
        passes.append(run_once())
        first_pass.set()
        return passes[-1]

    sweeper.run_once = counted  # type: ignore[method-assign]
    sweeper.start()  # the first pass runs at once, the next after retention_interval_s (an hour)
    try:
        assert first_pass.wait(60)
    finally:
        sweeper.stop()
    assert [p.instances for p in passes] == [1]
    assert_purged(sessions, image)


# --- the API, the page and the CLI ------------------------------------------------------------------------------


def test_a_purged_picture_is_410_gone_and_the_page_says_why(tmp_path: Path) -> None:
    from worklist.app import create_app

    client = TestClient(create_app(f"sqlite:///{tmp_path / 'api.sqlite3'}", api_token="s3cret",
                                   retention_days=DAYS))
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    store(sessions, tmp_path, "14.1", "s.14")
    live = store(sessions, tmp_path, "15.1", "s.15", days_ago=1)
    url = "/api/studies/s.14/images/14.1/{}.png"
    assert client.get(url.format("preview"), headers=AUTH).status_code == 200
    assert purge_expired(sessions, config(tmp_path)).instances == 1
    for kind in ("preview", "heatmap", "display"):
        gone = client.get(url.format(kind), headers=AUTH)
        assert gone.status_code == 410 and gone.headers["content-type"] == "application/problem+json"
        body = gone.json()
        assert (body["status"], body["title"]) == (410, "Gone")
        assert body["detail"] == f"The images were removed by the retention policy after {DAYS} days."
        assert as_utc(datetime.fromisoformat(body["purged_at"])) == as_utc(row(sessions, "14.1").purged_at)
    assert client.get("/api/studies/s.15/images/15.1/heatmap.png", headers=AUTH).status_code == 200
    live.files[2].unlink()  # a picture that is merely missing (never purged) stays a 404
    assert client.get("/api/studies/s.15/images/15.1/heatmap.png", headers=AUTH).status_code == 404
    item = client.get("/api/studies/s.14", headers=AUTH).json()["instances"][0]
    assert item["preview_url"] is None and item["purged_at"] is not None
    assert client.get("/api/studies/s.15", headers=AUTH).json()["instances"][0]["purged_at"] is None
    page = client.get("/studies/s.14", headers=AUTH | {"Accept": "text/html"}).text
    assert f"The images were removed by the retention policy after {DAYS} days." in page
    assert "No preview was stored" not in page and "/images/14.1/" not in page  # no broken image


def test_a_purged_picture_still_on_disk_is_410_gone_everywhere(tmp_path: Path) -> None:
    from worklist.app import create_app

    client = TestClient(create_app(f"sqlite:///{tmp_path / 'api.sqlite3'}", api_token="s3cret",
                                   retention_days=DAYS))
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    image = store(sessions, tmp_path, "20.1", "s.20")
    url = "/api/studies/s.20/images/20.1/{}.png"
    assert client.get(url.format("display"), headers=AUTH).status_code == 200
    assert crash_after_marking(sessions) == ["20.1"]
    assert_pending(sessions, image, on_disk=image.files)  # every picture still there, its path still set
    for kind in ("preview", "heatmap", "display"):
        gone = client.get(url.format(kind), headers=AUTH)
        assert gone.status_code == 410, kind
        assert as_utc(datetime.fromisoformat(gone.json()["purged_at"])) == as_utc(row(sessions, "20.1").purged_at)
    item = client.get("/api/studies/s.20", headers=AUTH).json()["instances"][0]
    assert item["purged_at"] is not None
    assert (item["has_preview"], item["has_heatmap"], item["has_display"]) == (False, False, False)
    assert (item["preview_url"], item["heatmap_url"], item["display_url"]) == (None, None, None)
    page = client.get("/studies/s.20", headers=AUTH | {"Accept": "text/html"}).text
    assert f"The images were removed by the retention policy after {DAYS} days." in page
    assert "/images/20.1/" not in page


def test_the_cli_purges_prints_the_counts_and_says_when_retention_is_off(database_url: str,
                                                                          tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from db.engine import make_engine, make_session_factory
    from triage.main import app

    sessions = make_session_factory(make_engine(database_url))
    image = store(sessions, tmp_path, "16.1", "s.16")
    env = {"TRIAGE_DATABASE_URL": database_url, "TRIAGE_DATA_DIR": str(tmp_path / "var"),
           "TRIAGE_RETENTION_DAYS": "0", "TRIAGE_RESULT_DESTINATIONS": "", "TRIAGE_RESULT_STOW_URL": "",
           "TRIAGE_HL7_DESTINATION": ""}
    runner = CliRunner()
    off = runner.invoke(app, ["purge"], env=env)
    assert off.exit_code == 0, off.output
    assert "retention is off (TRIAGE_RETENTION_DAYS=0)" in off.output and "--days" in off.output
    dry = runner.invoke(app, ["purge", "--days", str(DAYS), "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "dry run: 1 instance(s)" in dry.output and f"would delete {len(image.files)} file(s)" in dry.output
    assert f"({image.size} bytes)" in dry.output
    assert_kept(sessions, image)
    size = image.size
    done = runner.invoke(app, ["purge"], env=env | {"TRIAGE_RETENTION_DAYS": str(DAYS)})
    assert done.exit_code == 0, done.output
    assert f"1 instance(s) of read studies processed over {DAYS} day(s) ago" in done.output
    assert f"deleted {len(image.files)} file(s)" in done.output and f"({size} bytes)" in done.output
    assert_purged(sessions, image)
    assert "left pending" not in done.output
    crashed = store(sessions, tmp_path, "16.2", "s.16b")
    assert crash_after_marking(sessions) == ["16.2"]
    resumed = runner.invoke(app, ["purge"], env=env | {"TRIAGE_RETENTION_DAYS": str(DAYS)})
    assert resumed.exit_code == 0, resumed.output
    assert "0 instance(s) of read studies" in resumed.output and f"deleted {len(crashed.files)} file(s)" in \
        resumed.output
    assert "1 instance(s) left pending by an earlier pass taken up; 0 instance(s) left pending" in resumed.output
    assert_purged(sessions, crashed)
    assert runner.invoke(app, ["purge", "--days", "0"], env=env).exit_code == 2  # 0 is "off", not "everything"


def test_the_setting_reaches_the_worker_config(tmp_path: Path) -> None:
    from triage.settings import Settings
    from triage.wiring import settings_env, worker_config

    assert Settings(_env_file=None, data_dir=tmp_path).retention_days == 0
    settings = Settings(_env_file=None, data_dir=tmp_path, retention_days=90)
    assert worker_config(settings).retention_days == 90
    assert settings_env(settings)["TRIAGE_RETENTION_DAYS"] == "90"  # what serve's worker child sees
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Settings(_env_file=None, retention_days=-1)

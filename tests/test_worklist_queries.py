"""The worklist's database side on SQLite and PostgreSQL: read/unread order, filters, sort, paging, the live-update
token, the audit table, the metrics snapshot and the 0001 → 0002 migration."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.engine import alembic_config, make_engine, make_session_factory
from db.models import InstanceStatus, Study

from db_records import MODEL, process, receive, record


def add(sessions: sessionmaker[Session], sop: str, study: str, score: float | None,
        status: InstanceStatus = InstanceStatus.DONE, reason: str | None = None, **fields: object) -> None:
    """Receive and finish one instance."""
    assert process(sessions, receive(sessions, sop, study, **fields), score, status, reason)


def order(sessions: sessionmaker[Session], **kwargs: object) -> list[str]:
    with sessions() as session:
        return [entry.study_uid for entry in queries.worklist(session, **kwargs)]  # type: ignore[arg-type]


def mark(sessions: sessionmaker[Session], study: str, read: bool, actor: str = "dr-a") -> None:
    with sessions.begin() as session:
        assert queries.set_read(session, study, read=read, actor=actor) is not None


def test_read_studies_drop_to_the_bottom_and_never_leave(sessions: sessionmaker[Session]) -> None:
    add(sessions, "1.1", "s.old", 0.1)  # oldest, not flagged
    add(sessions, "1.2", "s.high", 0.9)
    add(sessions, "1.3", "s.mid", 0.7)  # flagged after s.high: the newer flag comes first
    add(sessions, "1.4", "s.new", 0.2)
    add(sessions, "1.5", "s.newest", 0.3)
    assert order(sessions) == ["s.mid", "s.high", "s.old", "s.new", "s.newest"]
    assert order(sessions, sort="flagged_score") == ["s.high", "s.mid", "s.old", "s.new", "s.newest"]
    mark(sessions, "s.high", True)
    mark(sessions, "s.old", True)
    # Read studies go below every unread one, in the same order among themselves.
    assert order(sessions) == ["s.mid", "s.new", "s.newest", "s.high", "s.old"]
    # The earlier order keeps a read flagged study above every unflagged one.
    assert order(sessions, sort="flagged_score") == ["s.mid", "s.high", "s.new", "s.newest", "s.old"]
    with sessions() as session:
        entry = {e.study_uid: e for e in queries.worklist(session)}["s.high"]
    assert entry.read and entry.read_by == "dr-a" and entry.read_at is not None
    assert order(sessions, read=False) == ["s.mid", "s.new", "s.newest"]
    assert order(sessions, read=True) == ["s.high", "s.old"]
    mark(sessions, "s.high", False)
    # Unread again, but its flag is not new: it stays below the newer flag.
    assert order(sessions) == ["s.mid", "s.high", "s.new", "s.newest", "s.old"]


def test_a_new_image_makes_a_read_study_unread(sessions: sessionmaker[Session]) -> None:
    add(sessions, "2.1", "s.2", 0.1)
    mark(sessions, "s.2", True)
    with sessions.begin() as session:
        queries.record_received(session, record("2.2", "s.2"))
    with sessions() as session:
        assert not queries.worklist(session)[0].read


def test_filters_combine(sessions: sessionmaker[Session]) -> None:
    add(sessions, "3.1", "s.a", 0.9, patient_name="SMITH^ANNA", patient_id="PX1", accession_number="ACC100")
    add(sessions, "3.2", "s.b", None, InstanceStatus.NOT_ANALYSED, "LATERAL_VIEW", patient_name="JONES^BOB",
        patient_id="PX2", accession_number="ACC200")
    add(sessions, "3.3", "s.c", None, InstanceStatus.FAILED, "NO_PIXEL_DATA", patient_name="SMITH^CARL",
        patient_id="PX3", accession_number="A_%300")
    assert order(sessions, status="NOT_ANALYSED") == ["s.b", "s.c"]
    assert order(sessions, status="FAILED") == ["s.c"]
    assert order(sessions, status="DONE") == ["s.a"]
    assert order(sessions, flagged=True) == ["s.a"] and order(sessions, flagged=False) == ["s.b", "s.c"]
    assert order(sessions, text="smith") == ["s.a", "s.c"]
    assert order(sessions, text="smith carl") == ["s.c"]  # every word must match
    assert order(sessions, text="acc2") == ["s.b"]
    assert order(sessions, text="px1") == ["s.a"]
    assert order(sessions, text="_%") == ["s.c"]  # LIKE wildcards are literal
    assert order(sessions, text="%") == ["s.c"]
    assert order(sessions, text="smith", flagged=False) == ["s.c"]
    with sessions() as session:
        states = {e.study_uid: (e.state, e.reason) for e in queries.worklist(session)}
        assert queries.worklist_total(session, text="smith") == 2
    assert states == {"s.a": ("done", None), "s.b": ("not_analysed", "LATERAL_VIEW"),
                      "s.c": ("failed", "NO_PIXEL_DATA")}


def test_received_date_range_and_sorts_and_paging(sessions: sessionmaker[Session]) -> None:
    days = {"s.d1": date(2026, 1, 1), "s.d2": date(2026, 1, 2), "s.d3": date(2026, 1, 3)}
    for index, (study, day) in enumerate(days.items()):
        add(sessions, f"4.{index}", study, 0.1 * (index + 1), patient_name=f"P^{3 - index}",
            accession_number=f"B{index}")
        with sessions.begin() as session:
            session.execute(update(Study).where(Study.study_instance_uid == study).values(
                received_at=datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC)))
    assert order(sessions, received_from=date(2026, 1, 2)) == ["s.d2", "s.d3"]
    assert order(sessions, received_to=date(2026, 1, 2)) == ["s.d1", "s.d2"]  # the whole last day counts
    assert order(sessions, received_from=date(2026, 1, 2), received_to=date(2026, 1, 2)) == ["s.d2"]
    assert order(sessions, received_to=date.max, received_from=date.min) == list(days)
    assert order(sessions, sort="received_desc") == ["s.d3", "s.d2", "s.d1"]
    assert order(sessions, sort="score_desc") == ["s.d3", "s.d2", "s.d1"]
    assert order(sessions, sort="patient") == ["s.d3", "s.d2", "s.d1"]
    assert order(sessions, sort="accession") == ["s.d1", "s.d2", "s.d3"]
    assert order(sessions, limit=2) == ["s.d1", "s.d2"] and order(sessions, limit=2, offset=2) == ["s.d3"]


def test_received_days_are_the_sites_days(sessions: sessionmaker[Session]) -> None:
    """A hospital in New York asking for 25 November wants what arrived on its 25th, not UTC's."""
    from zoneinfo import ZoneInfo

    new_york, auckland = ZoneInfo("America/New_York"), ZoneInfo("Pacific/Auckland")
    arrivals = {"s.late": datetime(2026, 11, 26, 3, 0, tzinfo=UTC),  # 25 Nov 22:00 in New York
                "s.noon": datetime(2026, 11, 26, 17, 0, tzinfo=UTC)}  # 26 Nov 12:00 in New York
    for index, (study, received) in enumerate(arrivals.items()):
        add(sessions, f"9.{index}", study, 0.1)
        with sessions.begin() as session:
            session.execute(update(Study).where(Study.study_instance_uid == study).values(received_at=received))
    nov25, nov26, nov27 = date(2026, 11, 25), date(2026, 11, 26), date(2026, 11, 27)
    assert order(sessions, received_from=nov26, received_to=nov26) == ["s.late", "s.noon"]  # UTC by default
    assert order(sessions, received_from=nov25, received_to=nov25, zone=new_york) == ["s.late"]
    assert order(sessions, received_from=nov26, zone=new_york) == ["s.noon"]
    assert order(sessions, received_from=nov27, received_to=nov27, zone=auckland) == ["s.noon"]  # UTC+13
    assert order(sessions, received_from=date.min, received_to=date.max, zone=auckland) == ["s.late", "s.noon"]
    with sessions() as session:
        assert queries.worklist_total(session, received_to=nov25, zone=new_york) == 1


def test_study_version_changes_with_what_its_page_shows(sessions: sessionmaker[Session]) -> None:
    def version(study: str = "s.v") -> str | None:
        with sessions() as session:
            return queries.study_version(session, study)

    assert version() is None
    item = receive(sessions, "7.1", "s.v")
    seen = [version()]
    receive(sessions, "7.9", "s.other")
    assert version() == seen[-1]  # another study's arrival is not this page's news
    with sessions.begin() as session:
        work = queries.claim(session, item.instance_id)
    seen.append(version())
    assert work is not None
    with sessions.begin() as session:
        queries.finish(session, work, queries.Outcome(InstanceStatus.DONE, None, score=0.9, **MODEL))
    seen.append(version())
    mark(sessions, "s.v", read=True)
    seen.append(version())
    receive(sessions, "7.2", "s.v")  # a second image of the study
    seen.append(version())
    assert None not in seen and len(set(seen)) == len(seen), seen


def test_version_token_changes_with_what_the_list_shows(sessions: sessionmaker[Session]) -> None:
    def version() -> str:
        with sessions() as session:
            return queries.worklist_version(session)

    seen = [version()]
    with sessions.begin() as session:
        item = queries.record_received(session, record("5.1", "s.5"))
    seen.append(version())
    with sessions.begin() as session:
        work = queries.claim(session, item.instance_id)
    with sessions.begin() as session:
        assert work is not None
        queries.finish(session, work, queries.Outcome(InstanceStatus.DONE, score=0.7, **MODEL))
    seen.append(version())
    mark(sessions, "s.5", True)
    seen.append(version())
    assert len(set(seen)) == 4, seen
    assert version() == seen[-1]  # and stays put while nothing happens


def test_study_detail_has_per_image_threshold_decision_and_pictures(sessions: sessionmaker[Session]) -> None:
    add(sessions, "6.1", "s.6", 0.7)
    add(sessions, "6.2", "s.6", 0.2)
    add(sessions, "6.3", "s.6", None, InstanceStatus.NOT_ANALYSED, "LATERAL_VIEW", view_position="LL")
    with sessions() as session:
        detail = queries.study_detail(session, "s.6")
        assert queries.instance_image_path(session, "s.6", "6.1", "preview") is None
        assert queries.instance_image_path(session, "other", "6.1", "preview") is None
    assert detail is not None and detail["flag"] and detail["score"] == pytest.approx(0.7)
    by_sop = {i["sop_instance_uid"]: i for i in detail["instances"]}
    assert (by_sop["6.1"]["flag"], by_sop["6.2"]["flag"], by_sop["6.3"]["flag"]) == (True, False, False)
    assert by_sop["6.1"]["threshold"] == 0.5 and by_sop["6.3"]["threshold"] is None
    assert by_sop["6.3"]["reason"] == "LATERAL_VIEW" and not by_sop["6.1"]["has_preview"]


def test_previews_are_recorded_and_cleared_by_a_resend(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        item = queries.record_received(session, record("7.1", "s.7"))
    with sessions.begin() as session:
        work = queries.claim(session, item.instance_id)
    with sessions.begin() as session:
        assert work is not None
        queries.finish(session, work, queries.Outcome(InstanceStatus.DONE, score=0.3, preview_path="/p/a.png",
                                                      heatmap_path="/p/a.heatmap.png", **MODEL))
    with sessions() as session:
        assert queries.instance_image_path(session, "s.7", "7.1", "preview") == "/p/a.png"
        assert queries.instance_image_path(session, "s.7", "7.1", "heatmap") == "/p/a.heatmap.png"
    with sessions.begin() as session:
        queries.record_received(session, record("7.1", "s.7"))  # a resend: its old pictures are not current
    with sessions() as session:
        assert queries.instance_image_path(session, "s.7", "7.1", "preview") is None


def test_audit_records_who_read_which_study(sessions: sessionmaker[Session]) -> None:
    add(sessions, "8.1", "s.8", 0.3)
    with sessions.begin() as session:
        queries.record_audit(session, actor="dr-b", action="view", study_uid="s.8", detail="GET /studies/{uid}")
    mark(sessions, "s.8", True, actor="dr-b")
    with sessions() as session:
        events = queries.audit_events(session, study_uid="s.8")
    assert [(e["actor"], e["action"]) for e in events] == [("dr-b", "mark_read"), ("dr-b", "view")]
    assert all(datetime.fromisoformat(e["at"]).tzinfo is not None for e in events)


def test_metrics_snapshot_counts_and_histograms(sessions: sessionmaker[Session]) -> None:
    add(sessions, "9.1", "s.9", 0.05)
    add(sessions, "9.2", "s.9b", 0.95)
    add(sessions, "9.3", "s.9c", None, InstanceStatus.FAILED, "NO_PIXEL_DATA")
    with sessions.begin() as session:
        queries.record_received(session, record("9.4", "s.9d"))  # still waiting
        queries.record_received(session, record("9.1", "s.9"))  # a resend counts as received again
    with sessions() as session:
        snap = queries.metrics_snapshot(session, [1.0, 60.0], [0.1, 0.5, 1.0])
    assert snap.received == 5
    assert snap.by_status == {"DONE": 1, "FAILED": 1, "RECEIVED": 2}
    assert snap.failed_by_reason == {"NO_PIXEL_DATA": 1}
    histogram = snap.scores["m1"]
    assert histogram.count == 2 and histogram.buckets == [(0.1, 1), (0.5, 1), (1.0, 2)]
    assert histogram.total == pytest.approx(1.0)
    # s.9 is pending again but keeps its last result's latency until the new one is final.
    assert snap.receive_to_flag is not None and snap.receive_to_flag.count == 3
    assert snap.receive_to_flag.buckets[-1] == (60.0, 3)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0002_keeps_rows_and_backfills_time_to_flag(backend: str, tmp_path: Path) -> None:
    from alembic import command

    from conftest import _postgres_database

    urls = iter([f"sqlite:///{tmp_path / 'old.sqlite3'}"]) if backend == "sqlite" else _postgres_database()
    for url in urls:
        command.upgrade(alembic_config(url), "0001")
        engine = create_engine(url)
        received = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO studies (study_instance_uid, patient_name, patient_id, accession_number, "
                "study_description, received_at, updated_at, status, flag, flagged_at) VALUES "
                "('m.1', 'A', 'B', 'C', 'D', :r, :r, 'DONE', false, :f), "
                "('m.2', 'A', 'B', 'C', 'D', :r, :r, 'PENDING', false, NULL)"),
                {"r": received, "f": received + timedelta(seconds=42.5)})
        engine.dispose()
        engine = make_engine(url)
        from db.engine import migrate

        migrate(engine)
        with make_session_factory(engine)() as session:
            entries = {e.study_uid: e for e in queries.worklist(session)}
        engine.dispose()
        assert entries["m.1"].time_to_flag_s == pytest.approx(42.5)
        assert entries["m.2"].time_to_flag_s is None and not entries["m.2"].read


def test_worker_liveness_follows_heartbeats(sessions) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from db import heartbeats
    from db.models import WorkerHeartbeat, utcnow

    with sessions() as session:
        assert heartbeats.liveness(session) == heartbeats.WorkerLiveness(alive=0, last_seen_s=None)
    with sessions.begin() as session:
        heartbeats.beat(session, "host:1", 1, utcnow())
        session.add(WorkerHeartbeat(name="host:2", pid=2, started_at=utcnow() - timedelta(hours=1),
                                    last_seen=utcnow() - timedelta(minutes=5)))  # died five minutes ago
    with sessions() as session:
        live = heartbeats.liveness(session)
    assert live.alive == 1 and live.last_seen_s is not None and live.last_seen_s < 5

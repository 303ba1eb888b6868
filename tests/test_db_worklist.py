"""db.worklist on SQLite and PostgreSQL: the triage order and the others, read studies last, filters (criteria,
text, the site's days), paging, the live-update tokens and one study's detail."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db import ingest
from db.models import Instance, InstanceStatus, Study, utcnow
from db.worklist import (
    WorklistFilter,
    instance_image_path,
    set_read,
    study_detail,
    study_version,
    worklist,
    worklist_total,
    worklist_version,
)

from db_records import MODEL, process, receive, record
from db_records import receive_processed as add


def order(sessions: sessionmaker[Session], sort: str = "priority", limit: int = 200, offset: int = 0,
          **criteria: Any) -> list[str]:
    """The study UIDs the criteria (WorklistFilter's fields) match, in ``sort`` order."""
    with sessions() as session:
        entries = worklist(session, WorklistFilter(**criteria), sort=sort, limit=limit, offset=offset)
    return [entry.study_uid for entry in entries]


def mark(sessions: sessionmaker[Session], study: str, read: bool, actor: str = "dr-a") -> None:
    with sessions.begin() as session:
        assert set_read(session, study, read=read, actor=actor) is not None


def test_worklist_puts_the_newest_flag_first_then_arrival(sessions: sessionmaker[Session]) -> None:
    items = {name: receive(sessions, f"2.{i}", f"8.{i}") for i, name in enumerate("abcd")}
    process(sessions, items["a"], 0.1)  # oldest, not flagged
    process(sessions, items["c"], 0.9)
    process(sessions, items["b"], 0.7)  # flagged last: first, whatever its score
    process(sessions, items["d"], None, InstanceStatus.NOT_ANALYSED, "LATERAL_VIEW")
    with sessions() as session:
        order = [entry.study_uid for entry in worklist(session)]
        by_score = [entry.study_uid for entry in worklist(session, sort="flagged_score")]
        flagged = [entry.study_uid for entry in worklist(session, WorklistFilter(flagged=True))]
        not_analysed = worklist(session, WorklistFilter(status="NOT_ANALYSED"))
    assert order == ["8.1", "8.2", "8.0", "8.3"]
    assert by_score == ["8.2", "8.1", "8.0", "8.3"]
    assert flagged == ["8.1", "8.2"]
    assert [(e.study_uid, e.reason) for e in not_analysed] == [("8.3", "LATERAL_VIEW")]


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
        entry = {e.study_uid: e for e in worklist(session)}["s.high"]
    assert entry.read and entry.read_by == "dr-a" and entry.read_at is not None
    assert order(sessions, read=False) == ["s.mid", "s.new", "s.newest"]
    assert order(sessions, read=True) == ["s.high", "s.old"]
    mark(sessions, "s.high", False)
    # Unread again, but its flag is not new: it stays below the newer flag.
    assert order(sessions) == ["s.mid", "s.high", "s.new", "s.newest", "s.old"]


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
        states = {e.study_uid: (e.state, e.reason) for e in worklist(session)}
        assert worklist_total(session, WorklistFilter(text="smith")) == 2
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
        assert worklist_total(session, WorklistFilter(received_to=nov25, zone=new_york)) == 1


def test_study_version_changes_with_what_its_page_shows(sessions: sessionmaker[Session]) -> None:
    def version(study: str = "s.v") -> str | None:
        with sessions() as session:
            return study_version(session, study)

    assert version() is None
    item = receive(sessions, "7.1", "s.v")
    seen = [version()]
    receive(sessions, "7.9", "s.other")
    assert version() == seen[-1]  # another study's arrival is not this page's news
    with sessions.begin() as session:
        work = ingest.claim(session, item.instance_id)
    seen.append(version())
    assert work is not None
    with sessions.begin() as session:
        ingest.finish(session, work, ingest.Outcome(InstanceStatus.DONE, None, score=0.9, **MODEL))
    seen.append(version())
    mark(sessions, "s.v", read=True)
    seen.append(version())
    with sessions.begin() as session:  # retention removes its pictures: the open page must show it
        session.execute(update(Instance).where(Instance.id == item.instance_id).values(purged_at=utcnow()))
    seen.append(version())
    receive(sessions, "7.2", "s.v")  # a second image of the study
    seen.append(version())
    assert None not in seen and len(set(seen)) == len(seen), seen


def test_version_token_changes_with_what_the_list_shows(sessions: sessionmaker[Session]) -> None:
    def version() -> str:
        with sessions() as session:
            return worklist_version(session)

    seen = [version()]
    with sessions.begin() as session:
        item = ingest.record_received(session, record("5.1", "s.5"))
    seen.append(version())
    with sessions.begin() as session:
        work = ingest.claim(session, item.instance_id)
    with sessions.begin() as session:
        assert work is not None
        ingest.finish(session, work, ingest.Outcome(InstanceStatus.DONE, score=0.7, **MODEL))
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
        detail = study_detail(session, "s.6")
        assert instance_image_path(session, "s.6", "6.1", "preview") is None
        assert instance_image_path(session, "other", "6.1", "preview") is None
    assert detail is not None and detail.flag and detail.score == pytest.approx(0.7)
    by_sop = {i.sop_instance_uid: i for i in detail.instances}
    assert (by_sop["6.1"].flag, by_sop["6.2"].flag, by_sop["6.3"].flag) == (True, False, False)
    assert by_sop["6.1"].threshold == 0.5 and by_sop["6.3"].threshold is None
    assert by_sop["6.3"].reason == "LATERAL_VIEW" and not by_sop["6.1"].has_preview

"""The database layer on SQLite and PostgreSQL: commit, claim, finish, study score, order, outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import InstanceStatus

from db_records import MODEL, process, receive


def test_study_score_is_the_highest_image_score_and_flags_above_threshold(sessions: sessionmaker[Session]) -> None:
    low, high = receive(sessions, "1.1", "9.1"), receive(sessions, "1.2", "9.1")
    process(sessions, low, 0.2)
    with sessions() as session:
        pending = queries.worklist(session)[0]
    assert pending.status == "PENDING" and pending.score == pytest.approx(0.2) and not pending.flag
    process(sessions, high, 0.8)
    with sessions() as session:
        entry = queries.worklist(session)[0]
    assert entry.status == "DONE" and entry.score == pytest.approx(0.8) and entry.flag
    assert entry.images == 2 and entry.model_version == "m1" and entry.flagged_at is not None


def test_worklist_puts_the_newest_flag_first_then_arrival(sessions: sessionmaker[Session]) -> None:
    items = {name: receive(sessions, f"2.{i}", f"8.{i}") for i, name in enumerate("abcd")}
    process(sessions, items["a"], 0.1)  # oldest, not flagged
    process(sessions, items["c"], 0.9)
    process(sessions, items["b"], 0.7)  # flagged last: first, whatever its score
    process(sessions, items["d"], None, InstanceStatus.NOT_ANALYSED, "LATERAL_VIEW")
    with sessions() as session:
        order = [entry.study_uid for entry in queries.worklist(session)]
        by_score = [entry.study_uid for entry in queries.worklist(session, sort="flagged_score")]
        flagged = [entry.study_uid for entry in queries.worklist(session, flagged=True)]
        not_analysed = queries.worklist(session, status="NOT_ANALYSED")
    assert order == ["8.1", "8.2", "8.0", "8.3"]
    assert by_score == ["8.2", "8.1", "8.0", "8.3"]
    assert flagged == ["8.1", "8.2"]
    assert [(e.study_uid, e.reason) for e in not_analysed] == [("8.3", "LATERAL_VIEW")]


def test_resend_replaces_the_instance_and_makes_older_work_stale(sessions: sessionmaker[Session]) -> None:
    first = receive(sessions, "3.1", "7.1")
    with sessions.begin() as session:
        stale = queries.claim(session, first.instance_id, first.receive_count)
    second = receive(sessions, "3.1", "7.1")
    assert second.instance_id == first.instance_id and second.receive_count == 2
    with sessions.begin() as session:
        assert stale is not None
        assert not queries.finish(session, stale, queries.Outcome(InstanceStatus.DONE, score=0.9, **MODEL))
    assert process(sessions, second, 0.3)
    assert process(sessions, receive(sessions, "3.1", "7.1"), 0.4)  # a third copy, same model: upsert
    with sessions() as session:
        detail = queries.study_detail(session, "7.1")
        from db.models import Result
        results = session.query(Result).all()
    assert detail is not None and len(detail["instances"]) == 1
    assert detail["score"] == pytest.approx(0.4)
    assert len(results) == 1 and results[0].score == pytest.approx(0.4)


def test_a_resent_instance_starts_its_attempts_afresh_and_keeps_its_flag(sessions: sessionmaker[Session]) -> None:
    for copy in range(1, 7):  # the 4th copy used to exceed the attempt limit and demote the study
        item = receive(sessions, "3.9", "7.9")
        assert item.receive_count == copy
        with sessions.begin() as session:
            work = queries.claim(session, item.instance_id, item.receive_count)
        assert work is not None and work.attempts == 1
        with sessions.begin() as session:
            assert queries.finish(session, work, queries.Outcome(InstanceStatus.DONE, score=0.9, **MODEL))
        with sessions() as session:
            detail = queries.study_detail(session, "7.9")
        assert detail is not None and detail["flag"] and detail["status"] == "DONE" and len(detail["instances"]) == 1


def test_header_text_past_the_vr_limits_is_kept_verbatim(sessions: sessionmaker[Session]) -> None:
    long_id, long_accession = "P" * 100, "A" * 80
    receive(sessions, "3.8", "7.8", patient_id=long_id, accession_number=long_accession, modality="CR" * 10,
            view_position="POSTERO_ANTERIOR_VIEW", body_part="C" * 90, patient_name="N^" * 200,
            study_description="D" * 400)
    with sessions() as session:
        detail = queries.study_detail(session, "7.8")
    assert detail is not None
    assert detail["patient_id"] == long_id and detail["accession_number"] == long_accession
    assert detail["instances"][0]["modality"] == "CR" * 10


def test_finished_instance_is_not_claimed_again(sessions: sessionmaker[Session]) -> None:
    item = receive(sessions, "4.1", "6.1")
    process(sessions, item, 0.5)
    with sessions.begin() as session:
        assert queries.claim(session, item.instance_id, item.receive_count) is None


def test_outbox_finds_unqueued_and_abandoned_instances(sessions: sessionmaker[Session]) -> None:
    never_queued = receive(sessions, "5.1", "5.9")
    queued = receive(sessions, "5.2", "5.9")
    abandoned = receive(sessions, "5.3", "5.9")
    finished = receive(sessions, "5.4", "5.9")
    with sessions.begin() as session:
        queries.mark_queued(session, queued)
        queries.mark_queued(session, abandoned)
        queries.claim(session, abandoned.instance_id)
    process(sessions, finished, 0.1)
    now = datetime.now(UTC)
    with sessions() as session:
        soon = queries.stranded(session, received_before=now + timedelta(seconds=1),
                                started_before=now - timedelta(seconds=60))
        later = queries.stranded(session, received_before=now + timedelta(seconds=1),
                                 started_before=now + timedelta(seconds=60))
    assert [item.instance_id for item in soon] == [never_queued.instance_id]
    assert [item.instance_id for item in later] == [never_queued.instance_id, queued.instance_id,
                                                    abandoned.instance_id]


def test_stranded_can_leave_queued_instances_out(sessions: sessionmaker[Session]) -> None:
    queued = receive(sessions, "5.6", "5.8")
    with sessions.begin() as session:
        queries.mark_queued(session, queued)
    now = datetime.now(UTC)
    with sessions() as session:
        waiting = queries.stranded(session, received_before=now, started_before=now + timedelta(seconds=60),
                                   queued_before=datetime.min.replace(tzinfo=UTC))
        lost = queries.stranded(session, received_before=now, started_before=now - timedelta(seconds=60),
                                queued_before=now + timedelta(seconds=1))
        assert queries.queued_count(session) == 1
    assert waiting == [] and [item.instance_id for item in lost] == [queued.instance_id]

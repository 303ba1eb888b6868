"""db.ingest on SQLite and PostgreSQL: the commit point's record (one instance, one study, one work item; a re-sent
SOP Instance UID is the same row counted again), the worker's claim and outcome, the study's score and flag kept
current, and the outbox's view of committed instances nobody is working on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db import ingest
from db.models import Instance, InstanceStatus, Result, Study, StudyStatus, utcnow
from db.worklist import WorklistFilter, instance_image_path, set_read, study_detail, worklist

from db_records import MODEL, process, receive, record


def _counts(sessions: sessionmaker[Session]) -> tuple[int, int]:
    """How many studies and instances there are."""
    with sessions() as session:
        return (session.scalar(select(func.count(Study.id))) or 0,
                session.scalar(select(func.count(Instance.id))) or 0)


# --- the commit point -----------------------------------------------------------------------------------------


def test_record_received_files_the_instance_under_its_study_and_names_the_work(
        sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        item = ingest.record_received(session, record("10.1", "s.10", patient_age_years=61, institution=" General "))
    assert item == ingest.WorkItem(item.instance_id, 1)
    with sessions() as session:
        instance = session.get(Instance, item.instance_id)
        assert instance is not None
        assert (instance.sop_instance_uid, instance.status, instance.attempts, instance.spool_path) == (
            "10.1", InstanceStatus.RECEIVED, 0, "/spool/10.1.dcm")
        study = session.get(Study, instance.study_id)
        assert study is not None and study.study_instance_uid == "s.10"
        assert study.status == StudyStatus.PENDING and not study.flag and study.score is None
        assert (study.patient_age_years, study.institution) == (61, "General")  # the study's context, trimmed
    second = receive(sessions, "10.2", "s.10")  # another image of the same study
    assert second.instance_id != item.instance_id and second.receive_count == 1
    assert _counts(sessions) == (1, 2)


def test_a_resent_sop_instance_uid_is_the_same_work_item_counted_again(sessions: sessionmaker[Session]) -> None:
    first = receive(sessions, "11.1", "s.11")
    assert process(sessions, first, None, InstanceStatus.FAILED, "NO_PIXEL_DATA")
    with sessions() as session:
        failed = study_detail(session, "s.11")
    assert failed is not None and (failed.status, failed.reason) == ("NOT_ANALYSED", "NO_PIXEL_DATA")
    with sessions.begin() as session:
        again = ingest.record_received(session, record("11.1", "s.11", spool_path="/spool/11.1-copy.dcm"))
    assert again == ingest.WorkItem(first.instance_id, 2)
    assert _counts(sessions) == (1, 1)  # never a second row
    with sessions() as session:
        instance = session.get(Instance, first.instance_id)
        assert instance is not None
        # New work: received again, its old outcome and attempt count gone, the new copy's file in place.
        assert (instance.status, instance.reason, instance.attempts, instance.finished_at) == (
            InstanceStatus.RECEIVED, None, 0, None)
        assert instance.spool_path == "/spool/11.1-copy.dcm"
        resent = study_detail(session, "s.11")
    assert resent is not None and (resent.status, resent.reason) == ("PENDING", None)


def test_a_resend_filed_under_another_study_refreshes_the_study_it_left(sessions: sessionmaker[Session]) -> None:
    high, low = receive(sessions, "12.1", "s.12a"), receive(sessions, "12.2", "s.12a")
    assert process(sessions, high, 0.9) and process(sessions, low, 0.2)
    moved = receive(sessions, "12.1", "s.12b")  # the same image, sent again with another study's UID
    assert moved == ingest.WorkItem(high.instance_id, 2)
    with sessions() as session:
        left, joined = study_detail(session, "s.12a"), study_detail(session, "s.12b")
    assert left is not None and joined is not None
    assert (left.status, left.score, left.flag, left.images) == ("DONE", pytest.approx(0.2), False, 1)
    assert (joined.status, joined.images) == ("PENDING", 1)
    assert _counts(sessions) == (2, 2)


def test_a_study_keeps_the_context_it_knows(sessions: sessionmaker[Session]) -> None:
    """Images of one study come from different files and senders: a known value is never replaced, least of all
    by an empty one; what the study did not know yet is taken from the next image that says it."""
    receive(sessions, "13.1", "s.13", patient_sex="F", institution="General", priority=None)
    receive(sessions, "13.2", "s.13", patient_sex="M", institution="  ", priority="STAT")
    with sessions() as session:
        detail = study_detail(session, "s.13")
    assert detail is not None and (detail.patient_sex, detail.institution, detail.priority) == ("F", "General", "STAT")


def test_a_new_image_makes_a_read_study_unread(sessions: sessionmaker[Session]) -> None:
    assert process(sessions, receive(sessions, "2.1", "s.2"), 0.1)
    with sessions.begin() as session:
        assert set_read(session, "s.2", read=True, actor="dr-a") is not None
    with sessions.begin() as session:
        ingest.record_received(session, record("2.2", "s.2"))
    with sessions() as session:
        assert not worklist(session)[0].read


def test_header_text_past_the_vr_limits_is_kept_verbatim(sessions: sessionmaker[Session]) -> None:
    long_id, long_accession = "P" * 100, "A" * 80
    receive(sessions, "3.8", "7.8", patient_id=long_id, accession_number=long_accession, modality="CR" * 10,
            view_position="POSTERO_ANTERIOR_VIEW", body_part="C" * 90, patient_name="N^" * 200,
            study_description="D" * 400)
    with sessions() as session:
        detail = study_detail(session, "7.8")
    assert detail is not None
    assert detail.patient_id == long_id and detail.accession_number == long_accession
    assert detail.instances[0].modality == "CR" * 10


# --- the study's result -----------------------------------------------------------------------------------------


def test_study_score_is_the_highest_image_score_and_flags_above_threshold(sessions: sessionmaker[Session]) -> None:
    low, high = receive(sessions, "1.1", "9.1"), receive(sessions, "1.2", "9.1")
    process(sessions, low, 0.2)
    with sessions() as session:
        pending = worklist(session)[0]
    assert pending.status == "PENDING" and pending.score == pytest.approx(0.2) and not pending.flag
    process(sessions, high, 0.8)
    with sessions() as session:
        entry = worklist(session)[0]
    assert entry.status == "DONE" and entry.score == pytest.approx(0.8) and entry.flag
    assert entry.images == 2 and entry.model_version == "m1" and entry.flagged_at is not None


def test_a_study_nothing_could_score_says_why_and_a_scored_image_decides(sessions: sessionmaker[Session]) -> None:
    lateral, unreadable = receive(sessions, "14.1", "s.14"), receive(sessions, "14.2", "s.14")
    assert process(sessions, lateral, None, InstanceStatus.NOT_ANALYSED, "LATERAL_VIEW")
    assert process(sessions, unreadable, None, InstanceStatus.FAILED, "UNREADABLE_PIXEL_DATA")
    with sessions() as session:
        unscored = study_detail(session, "s.14")
    assert unscored is not None and (unscored.status, unscored.reason, unscored.score) == (
        "NOT_ANALYSED", "LATERAL_VIEW", None)  # the first image's reason
    assert process(sessions, receive(sessions, "14.3", "s.14"), 0.3)
    with sessions() as session:
        scored = study_detail(session, "s.14")
    assert scored is not None and (scored.status, scored.reason, scored.score, scored.flag) == (
        "DONE", None, pytest.approx(0.3), False)


def test_time_to_flag_counts_from_the_studys_latest_receive(sessions: sessionmaker[Session]) -> None:
    """A copy resent hours later measures the system, not the hours in between."""
    early, late = receive(sessions, "15.1", "s.15"), receive(sessions, "15.2", "s.15")
    with sessions.begin() as session:
        for item, age in ((early, timedelta(hours=3)), (late, timedelta(seconds=100))):
            session.execute(update(Instance).where(Instance.id == item.instance_id)
                            .values(received_at=utcnow() - age))
    assert process(sessions, early, 0.1) and process(sessions, late, 0.2)
    with sessions() as session:
        detail = study_detail(session, "s.15")
    assert detail is not None and detail.time_to_flag_s is not None
    assert 100 <= detail.time_to_flag_s < 100 + 600


# --- claim and finish -------------------------------------------------------------------------------------------


def test_resend_replaces_the_instance_and_makes_older_work_stale(sessions: sessionmaker[Session]) -> None:
    first = receive(sessions, "3.1", "7.1")
    with sessions.begin() as session:
        stale = ingest.claim(session, first.instance_id, first.receive_count)
    second = receive(sessions, "3.1", "7.1")
    assert second.instance_id == first.instance_id and second.receive_count == 2
    with sessions.begin() as session:
        assert stale is not None
        assert not ingest.finish(session, stale, ingest.Outcome(InstanceStatus.DONE, score=0.9, **MODEL))
    assert process(sessions, second, 0.3)
    assert process(sessions, receive(sessions, "3.1", "7.1"), 0.4)  # a third copy, same model: upsert
    with sessions() as session:
        detail = study_detail(session, "7.1")
        results = session.scalars(select(Result)).all()
    assert detail is not None and len(detail.instances) == 1
    assert detail.score == pytest.approx(0.4)
    assert len(results) == 1 and results[0].score == pytest.approx(0.4)


def test_a_resent_instance_starts_its_attempts_afresh_and_keeps_its_flag(sessions: sessionmaker[Session]) -> None:
    for copy in range(1, 7):  # the 4th copy used to exceed the attempt limit and demote the study
        item = receive(sessions, "3.9", "7.9")
        assert item.receive_count == copy
        with sessions.begin() as session:
            work = ingest.claim(session, item.instance_id, item.receive_count)
        assert work is not None and work.attempts == 1
        with sessions.begin() as session:
            assert ingest.finish(session, work, ingest.Outcome(InstanceStatus.DONE, score=0.9, **MODEL))
        with sessions() as session:
            detail = study_detail(session, "7.9")
        assert detail is not None and detail.flag and detail.status == "DONE" and len(detail.instances) == 1


def test_finished_instance_is_not_claimed_again(sessions: sessionmaker[Session]) -> None:
    item = receive(sessions, "4.1", "6.1")
    process(sessions, item, 0.5)
    with sessions.begin() as session:
        assert ingest.claim(session, item.instance_id, item.receive_count) is None


def test_previews_are_recorded_and_cleared_by_a_resend(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        item = ingest.record_received(session, record("7.1", "s.7"))
    with sessions.begin() as session:
        work = ingest.claim(session, item.instance_id)
    with sessions.begin() as session:
        assert work is not None
        ingest.finish(session, work, ingest.Outcome(InstanceStatus.DONE, score=0.3, preview_path="/p/a.png",
                                                    heatmap_path="/p/a.heatmap.png", **MODEL))
    with sessions() as session:
        assert instance_image_path(session, "s.7", "7.1", "preview") == "/p/a.png"
        assert instance_image_path(session, "s.7", "7.1", "heatmap") == "/p/a.heatmap.png"
    with sessions.begin() as session:
        ingest.record_received(session, record("7.1", "s.7"))  # a resend: its old pictures are not current
    with sessions() as session:
        assert instance_image_path(session, "s.7", "7.1", "preview") is None


# --- the outbox -------------------------------------------------------------------------------------------------


def test_outbox_finds_unqueued_and_abandoned_instances(sessions: sessionmaker[Session]) -> None:
    never_queued = receive(sessions, "5.1", "5.9")
    queued = receive(sessions, "5.2", "5.9")
    abandoned = receive(sessions, "5.3", "5.9")
    finished = receive(sessions, "5.4", "5.9")
    with sessions.begin() as session:
        ingest.mark_queued(session, queued)
        ingest.mark_queued(session, abandoned)
        ingest.claim(session, abandoned.instance_id)
    process(sessions, finished, 0.1)
    now = datetime.now(UTC)
    with sessions() as session:
        soon = ingest.stranded(session, received_before=now + timedelta(seconds=1),
                               started_before=now - timedelta(seconds=60))
        later = ingest.stranded(session, received_before=now + timedelta(seconds=1),
                                started_before=now + timedelta(seconds=60))
    assert [item.instance_id for item in soon] == [never_queued.instance_id]
    assert [item.instance_id for item in later] == [never_queued.instance_id, queued.instance_id,
                                                    abandoned.instance_id]


def test_an_abandoned_claim_is_republished_once_not_on_every_sweep(sessions: sessionmaker[Session]) -> None:
    item = receive(sessions, "5.7", "5.9")
    with sessions.begin() as session:
        ingest.mark_queued(session, item)
        ingest.claim(session, item.instance_id)  # the worker then dies
    later = datetime.now(UTC) + timedelta(seconds=60)

    def sweep() -> list[ingest.WorkItem]:
        """The sweeper's query while the published tasks wait in the broker (queued ones are left out)."""
        with sessions() as session:
            return ingest.stranded(session, received_before=later, started_before=later,
                                   queued_before=datetime.min.replace(tzinfo=UTC))

    [abandoned] = sweep()
    assert abandoned.claims == 1
    with sessions.begin() as session:
        ingest.mark_queued(session, abandoned)  # republished
    assert sweep() == []  # the next sweep does not publish it again
    with sessions.begin() as session:
        assert ingest.claim(session, item.instance_id, item.receive_count) is not None  # a worker takes it
        ingest.mark_queued(session, abandoned)  # a late note about the old claim leaves the new one alone
    with sessions() as session:
        assert session.scalar(select(Instance.status).where(Instance.id == item.instance_id)) \
            == InstanceStatus.PROCESSING


def test_stranded_can_leave_queued_instances_out(sessions: sessionmaker[Session]) -> None:
    queued = receive(sessions, "5.6", "5.8")
    with sessions.begin() as session:
        ingest.mark_queued(session, queued)
    now = datetime.now(UTC)
    with sessions() as session:
        waiting = ingest.stranded(session, received_before=now, started_before=now + timedelta(seconds=60),
                                  queued_before=datetime.min.replace(tzinfo=UTC))
        lost = ingest.stranded(session, received_before=now, started_before=now - timedelta(seconds=60),
                               queued_before=now + timedelta(seconds=1))
        assert ingest.queued_count(session) == 1
    assert waiting == [] and [item.instance_id for item in lost] == [queued.instance_id]


def test_a_task_published_after_a_worker_claimed_the_instance_does_not_mark_it_queued(
        sessions: sessionmaker[Session]) -> None:
    """The listener notes "queued" after publishing; a worker quicker than that note, or a newer copy, wins."""
    item = receive(sessions, "16.1", "s.16")
    with sessions.begin() as session:
        assert ingest.claim(session, item.instance_id, item.receive_count) is not None
        ingest.mark_queued(session, item)
    newer = receive(sessions, "16.1", "s.16")
    with sessions.begin() as session:
        ingest.mark_queued(session, item)  # the first copy's note comes late
    with sessions() as session:
        status = session.scalar(select(Instance.status).where(Instance.id == item.instance_id))
        assert status == InstanceStatus.RECEIVED and ingest.queued_count(session) == 0
    with sessions.begin() as session:
        ingest.mark_queued(session, newer)
    with sessions() as session:
        assert ingest.queued_count(session) == 1
        assert [e.study_uid for e in worklist(session, WorklistFilter(status="PENDING"))] == ["s.16"]

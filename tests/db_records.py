"""Records and outcomes for database-level tests (the shape the commit point and the worker produce)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db import ingest
from db.models import InstanceStatus

MODEL = dict(model_version="m1", model_sha256="a" * 64, threshold=0.5)


def record(sop: str, study: str, **overrides: object) -> ingest.ReceivedRecord:
    values: dict[str, object] = dict(
        sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1", study_instance_uid=study,
        series_instance_uid="1.2.3", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CR", body_part="CHEST",
        view_position="PA", patient_name="DOE^JANE", patient_id="P1", accession_number="A1", study_date=None,
        study_description="XR CHEST", spool_path=f"/spool/{sop}.dcm", size_bytes=10, calling_ae="TEST",
    )
    values.update(overrides)
    return ingest.ReceivedRecord(**values)  # type: ignore[arg-type]


def receive(sessions: sessionmaker[Session], sop: str, study: str, **fields: object) -> ingest.WorkItem:
    """Commit one instance as the listener would."""
    with sessions.begin() as session:
        return ingest.record_received(session, record(sop, study, **fields))


def process(sessions: sessionmaker[Session], item: ingest.WorkItem, score: float | None,
            status: InstanceStatus = InstanceStatus.DONE, reason: str | None = None) -> bool:
    """Claim and finish one instance as the worker would; False when the work was stale."""
    with sessions.begin() as session:
        work = ingest.claim(session, item.instance_id, item.receive_count)
    assert work is not None
    outcome = ingest.Outcome(status, reason, score=score, **(MODEL if score is not None else {}))
    with sessions.begin() as session:
        return ingest.finish(session, work, outcome)


def receive_processed(sessions: sessionmaker[Session], sop: str, study: str, score: float | None,
                      status: InstanceStatus = InstanceStatus.DONE, reason: str | None = None,
                      **fields: object) -> None:
    """Receive one instance and finish it with ``score`` (or ``status`` and ``reason``)."""
    assert process(sessions, receive(sessions, sop, study, **fields), score, status, reason)

"""db.audit on SQLite and PostgreSQL: who read or changed which study, newest first."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db import audit
from db.worklist import set_read

from db_records import receive_processed


def test_audit_records_who_read_which_study(sessions: sessionmaker[Session]) -> None:
    receive_processed(sessions, "8.1", "s.8", 0.3)
    with sessions.begin() as session:
        audit.record_audit(session, actor="dr-b", action="view", study_uid="s.8", detail="GET /studies/{uid}")
    with sessions.begin() as session:
        assert set_read(session, "s.8", read=True, actor="dr-b") is not None
    with sessions() as session:
        events = audit.audit_events(session, study_uid="s.8")
    assert [(e.actor, e.action) for e in events] == [("dr-b", "mark_read"), ("dr-b", "view")]
    assert all(e.at.tzinfo is not None for e in events)

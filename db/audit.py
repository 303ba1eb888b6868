"""The audit trail: who read or changed which study, and when (never a patient's data, only a token's name)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditEvent, as_utc


def record_audit(session: Session, *, actor: str, action: str, study_uid: str | None = None,
                 detail: str | None = None) -> None:
    """One audit row: who (a token's name, never a patient), what, which study, when (now)."""
    session.add(AuditEvent(actor=actor[:128], action=action[:32], study_instance_uid=study_uid,
                           detail=detail[:512] if detail else None))


@dataclass(frozen=True)
class AuditRow:
    at: datetime  # UTC
    actor: str
    action: str
    study_uid: str | None
    detail: str | None


def audit_events(session: Session, *, study_uid: str | None = None, limit: int = 100) -> list[AuditRow]:
    """The newest ``limit`` events (of one study, when given), newest first."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if study_uid is not None:
        query = query.where(AuditEvent.study_instance_uid == study_uid)
    return [AuditRow(at=as_utc(e.at), actor=e.actor, action=e.action, study_uid=e.study_instance_uid, detail=e.detail)
            for e in session.scalars(query)]

"""Page sessions and sign-in attempts: the database side of ``worklist.auth``."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.audit import record_audit
from db.models import AuditEvent, WebSession, utcnow

LOGIN_FAILED = "login_failed"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, actor: str, lifetime: timedelta) -> str:
    """A new random token for ``actor``; the cookie carries it, the table only its hash."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(WebSession(token_sha256=_digest(token), actor=actor, created_at=now, expires_at=now + lifetime))
    return token


def session_actor(session: Session, token: str | None) -> str | None:
    """Whose live session this is; None when unknown, expired or ended."""
    if not token:
        return None
    return session.scalar(select(WebSession.actor).where(
        WebSession.token_sha256 == _digest(token), WebSession.ended_at.is_(None), WebSession.expires_at > utcnow()))


def end_session(session: Session, token: str | None) -> None:
    if token:
        session.execute(update(WebSession).where(WebSession.token_sha256 == _digest(token))
                        .values(ended_at=utcnow()))


def record_failed_login(session: Session, client: str) -> None:
    """Audited like every read: who is unknown, so the row names the client address (never the token tried)."""
    record_audit(session, actor="unknown", action=LOGIN_FAILED, detail=f"client {client}")


def recent_failed_logins(session: Session, client: str, since: datetime) -> int:
    return session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == LOGIN_FAILED, AuditEvent.detail == f"client {client}"[:512], AuditEvent.at >= since)) or 0

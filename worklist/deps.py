"""Shared request plumbing: database sessions, path parameter shapes, the audit write."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import quote

from fastapi import Path, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db.audit import record_audit

log = logging.getLogger(__name__)

# DICOM UIDs are digits and dots (at most 64); anything printable is let through to a clean 404, control
# characters and spaces are refused before they reach the database.
UID_PATTERN = r"^[\x21-\x7e]{1,64}$"
StudyUid = Annotated[str, Path(max_length=64, pattern=UID_PATTERN, description="Study Instance UID")]
SopUid = Annotated[str, Path(max_length=64, pattern=UID_PATTERN, description="SOP Instance UID")]
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def db_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def audit(request: Request, actor: str, action: str, study_uid: str | None = None, detail: str | None = None) -> None:
    """Write one audit row in its own transaction (the read it records has happened either way)."""
    try:
        with request.app.state.sessions.begin() as session:
            record_audit(session, actor=actor, action=action, study_uid=study_uid,
                                 detail=detail or f"{request.method} {request.url.path}")
    except SQLAlchemyError:
        # An unrecorded read must not pass silently: refuse to answer instead.
        log.exception("audit write failed for %s", request.url.path)
        raise


def image_url(prefix: str, study_uid: str, sop_uid: str, kind: str) -> str:
    return f"{prefix}/studies/{quote(study_uid, safe='')}/images/{quote(sop_uid, safe='')}/{kind}.png"

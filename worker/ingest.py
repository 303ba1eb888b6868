"""The commit point: spool file and database row, then (best effort) a task. Used by C-STORE and import."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import ReceivedRecord, WorkItem, record_association_refusal, record_received, record_rejection
from dicom_io.header import InstanceHeader, normalise_priority
from dicom_io.listener import (
    STATUS_OUT_OF_RESOURCES,
    OutOfResources,
    ReceivedInstance,
    RefusedAssociation,
    RejectedInstance,
)
from dicom_io.spool import Spool

log = logging.getLogger(__name__)

Publish = Callable[[WorkItem], None]


class Ingestor:
    """Implements dicom_io's Receiver: makes an instance durable before the sender hears 0x0000."""

    def __init__(self, spool: Spool, sessions: sessionmaker[Session], rejected_dir: Path, publish: Publish,
                 disk_watermark_percent: float = 90.0, priority_by_calling_aet: Mapping[str, str] | None = None
                 ) -> None:
        self.spool = spool
        rules = {aet.strip(): normalise_priority(value) for aet, value in (priority_by_calling_aet or {}).items()}
        self.priority_by_calling_aet = {aet: value for aet, value in rules.items() if value is not None}
        self.disk_watermark_percent = disk_watermark_percent
        self.sessions = sessions
        self.rejected_dir = rejected_dir
        self.publish = publish

    def commit(self, instance: ReceivedInstance) -> WorkItem:
        header = instance.header
        used = self.spool.disk_used_percent()
        if used >= self.disk_watermark_percent:  # refuse while a retry can still succeed, not at a full disk
            raise self._refused(instance, f"spool disk {used:.1f}% used, at or above the "
                                          f"{self.disk_watermark_percent:g}% watermark")
        known = self.spool.path_for(header.sop_instance_uid).exists()  # a resend replaces a committed copy
        try:
            path = self.spool.write(header.sop_instance_uid, instance.data)
        except OSError as exc:
            raise self._refused(instance, f"spool write failed: {exc.strerror or exc}") from exc
        # The same fields by design: db may not import dicom_io, so it has its own record type.
        record = ReceivedRecord(**asdict(self._with_sender_priority(header, instance.calling_ae)),
                                        spool_path=str(path), size_bytes=len(instance.data),
                                        calling_ae=instance.calling_ae)
        try:
            with self.sessions.begin() as session:
                item = record_received(session, record)
        except SQLAlchemyError as exc:
            if not known:  # nothing refers to the new file: the sender keeps its copy and will resend it
                path.unlink(missing_ok=True)
            raise OutOfResources(f"database write failed: {type(exc).__name__}") from exc
        self.publish(item)
        return item

    def _refused(self, instance: ReceivedInstance, reason: str) -> OutOfResources:
        """A 0xA700 answer (the sender keeps its copy and retries) with a durable record of it where the database
        can still take one: /metrics counts them, a person sees who was turned away. No payload is kept: the disk
        is the problem, and the sender still has it."""
        try:
            with self.sessions.begin() as session:
                record_rejection(session, calling_ae=instance.calling_ae, peer=instance.peer,
                                         status=STATUS_OUT_OF_RESOURCES, reason=reason, payload_path=None,
                                         size_bytes=len(instance.data))
        except SQLAlchemyError as exc:
            log.error("refusal not recorded (%s)", type(exc).__name__)
        return OutOfResources(reason)

    def _with_sender_priority(self, header: InstanceHeader, calling_ae: str) -> InstanceHeader:
        """The file's own order priority wins; without one, the sender's rule (if any) gives it."""
        if header.priority is not None:
            return header
        return replace(header, priority=self.priority_by_calling_aet.get(calling_ae.strip()))

    def refuse_association(self, refused: RefusedAssociation) -> None:
        """A row per association turned away, so a misconfigured sender shows up on /metrics and in the database."""
        try:
            with self.sessions.begin() as session:
                record_association_refusal(session, reason=refused.reason, calling_ae=refused.calling_ae,
                                           called_ae=refused.called_ae, peer=refused.peer)
        except SQLAlchemyError as exc:
            log.error("association refusal not recorded (%s)", type(exc).__name__)

    def reject(self, rejected: RejectedInstance) -> None:
        """Keep the refused payload and a row about it, so a person can see what a sender tried to send."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        payload_path: Path | None = self.rejected_dir / f"{stamp}-{uuid.uuid4().hex[:12]}.dcm"
        try:
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
            payload_path.write_bytes(rejected.data)  # type: ignore[union-attr]
        except OSError as exc:
            log.error("could not keep a refused payload: %s", exc)
            payload_path = None
        with self.sessions.begin() as session:
            record_rejection(
                session,
                calling_ae=rejected.calling_ae,
                peer=rejected.peer,
                status=rejected.status,
                reason=rejected.reason[:2000],
                payload_path=str(payload_path) if payload_path else None,
                size_bytes=len(rejected.data),
            )

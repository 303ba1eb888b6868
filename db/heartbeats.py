"""Worker heartbeats: written by each worker process, read by /healthz and /metrics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import WorkerHeartbeat, as_utc, utcnow

HEARTBEAT_INTERVAL_S = 5.0  # how often a worker writes its row
ALIVE_WITHIN_S = 3 * HEARTBEAT_INTERVAL_S  # a worker seen this recently counts as alive


def beat(session: Session, name: str, pid: int, started_at: datetime) -> None:
    row = session.get(WorkerHeartbeat, name)
    if row is None:
        session.add(WorkerHeartbeat(name=name, pid=pid, started_at=started_at, last_seen=utcnow()))
    else:
        row.pid, row.started_at, row.last_seen = pid, started_at, utcnow()


@dataclass(frozen=True)
class WorkerLiveness:
    alive: int  # workers seen since the cut-off
    last_seen_s: float | None  # seconds since any worker was last seen; None = never


def liveness(session: Session, alive_within_s: float = ALIVE_WITHIN_S) -> WorkerLiveness:
    now = utcnow()
    seen = session.scalars(select(WorkerHeartbeat.last_seen))
    ages = [(now - as_utc(value)).total_seconds() for value in seen]
    return WorkerLiveness(alive=sum(age <= alive_within_s for age in ages), last_seen_s=min(ages) if ages else None)

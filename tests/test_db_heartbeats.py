"""db.heartbeats on SQLite and PostgreSQL: a worker is alive while its heartbeat is recent."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from db import heartbeats
from db.models import WorkerHeartbeat, utcnow


def test_worker_liveness_follows_heartbeats(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert heartbeats.liveness(session) == heartbeats.WorkerLiveness(alive=0, last_seen_s=None)
    with sessions.begin() as session:
        heartbeats.beat(session, "host:1", 1, utcnow())
        session.add(WorkerHeartbeat(name="host:2", pid=2, started_at=utcnow() - timedelta(hours=1),
                                    last_seen=utcnow() - timedelta(minutes=5)))  # died five minutes ago
    with sessions() as session:
        live = heartbeats.liveness(session)
    assert live.alive == 1 and live.last_seen_s is not None and live.last_seen_s < 5

"""A worker process's heartbeat: a thread that refreshes its row every few seconds while the process lives."""

from __future__ import annotations

import logging
import os
import socket
import threading

from sqlalchemy.orm import Session, sessionmaker

from db import heartbeats
from db.heartbeats import HEARTBEAT_INTERVAL_S
from db.models import utcnow

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, sessions: sessionmaker[Session], name: str | None = None,
                 interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.sessions = sessions
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.interval_s = interval_s
        self.started_at = utcnow()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat_once(self) -> None:
        with self.sessions.begin() as session:
            heartbeats.beat(session, self.name, os.getpid(), self.started_at)

    def _run(self) -> None:
        while True:
            try:
                self.beat_once()
            except Exception as exc:  # the database is away: the next beat tries again
                log.warning("heartbeat not written (%s)", type(exc).__name__)
            if self._stop.wait(self.interval_s):
                return

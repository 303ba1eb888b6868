"""A Celery worker process as ``cxr-triage worker`` (and ``serve``'s supervised child) runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.engine import open_database
from worker.celery_app import create_celery
from worker.config import WorkerConfig
from worker.heartbeat import Heartbeat
from worker.queue_files import quarantine_unreadable_messages
from worker.served_model import ServedModel


@dataclass(frozen=True)
class WorkerResources:
    """What the worker's start opened and registered once, handed to its tasks (``app.conf.triage_resources``)."""

    sessions: sessionmaker[Session]
    model: ServedModel


def run_worker(config: WorkerConfig, *, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO",
               queues: str | None = None, hostname: str | None = None) -> None:
    """Run a Celery worker in this process (blocking). The model's weights load on the first task, in the process
    that runs it; its identity is registered here, before any task, so the page knows it from the start."""
    from celery.signals import worker_process_init

    from worker.served_model import register_served_model

    engine, sessions = open_database(config.database_url)  # migrate before tasks arrive
    model = register_served_model(sessions, config)
    Heartbeat(sessions, hostname).start()  # in this (parent) process: /healthz counts the worker while it lives
    if config.uses_embedded_broker:
        quarantine_unreadable_messages(config.queue_dir)  # one empty message file would stop every start

    def forget_parent_connections(**_: Any) -> None:
        """A forked pool process must not use the connections it inherited (SQLAlchemy: dispose, close=False)."""
        engine.dispose(close=False)

    worker_process_init.connect(forget_parent_connections, weak=False)
    app = create_celery(config)
    app.conf.triage_resources = WorkerResources(sessions, model)
    argv = ["worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
            f"--queues={queues or config.queue}", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)

"""A Celery worker process as ``cxr-triage worker`` (and ``serve``'s supervised child) runs it."""

from __future__ import annotations

from db.engine import open_database
from worker.celery_app import create_celery
from worker.config import WorkerConfig
from worker.heartbeat import Heartbeat
from worker.queue_files import quarantine_unreadable_messages


def run_worker(config: WorkerConfig, *, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO",
               queues: str | None = None, hostname: str | None = None) -> None:
    """Run a Celery worker in this process (blocking). The model loads on the first task, in the child."""
    from model.checkpoint import file_sha256, read_metadata  # torch: only in worker processes, not the listener
    from worker.pipeline import checkpoint_path, register_model

    engine, sessions = open_database(config.database_url)  # migrate before tasks arrive
    path = checkpoint_path(config)
    register_model(sessions, config, read_metadata(path), file_sha256(path))  # the page knows it from the start
    Heartbeat(sessions, hostname).start()  # in this (parent) process: /healthz counts the worker while it lives
    if config.uses_embedded_broker:
        quarantine_unreadable_messages(config.queue_dir)  # one empty message file would stop every start
    app = create_celery(config)
    argv = ["worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
            f"--queues={queues or config.queue}", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)

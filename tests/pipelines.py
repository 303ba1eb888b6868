"""A worker's pipeline for tests, built as a worker process builds it: the database opened and the model registered
once by the worker's start (``worker.celery_worker.run_worker``), then handed to the pipeline."""

from __future__ import annotations

from worker.config import WorkerConfig
from worker.pipeline import Pipeline


def worker_pipeline(config: WorkerConfig) -> Pipeline:
    from db.engine import open_database
    from worker.served_model import register_served_model

    _engine, sessions = open_database(config.database_url)
    return Pipeline(config, sessions, register_served_model(sessions, config))

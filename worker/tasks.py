"""Celery tasks. The pipeline (the worker's database sessions, and the model it registered, loaded) is built on a
task's first run in a process."""

from __future__ import annotations

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from worker.celery_app import CLASSIFY_TASK
from worker.pipeline import Pipeline


class PipelineTask(Task):
    """Celery keeps one task object per process: the natural home of a once-per-process model."""

    _pipeline: Pipeline | None = None

    @property
    def max_retries(self) -> int:
        """Retries while the database is away (TRIAGE_TASK_MAX_RETRIES), read from the worker's configuration."""
        return int(self.app.conf.triage.max_retries)

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            resources = self.app.conf.triage_resources  # worker.celery_worker.WorkerResources
            self._pipeline = Pipeline(self.app.conf.triage, resources.sessions, resources.model)
        return self._pipeline


@shared_task(
    bind=True,
    base=PipelineTask,
    name=CLASSIFY_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, PoolTimeoutError),  # the database is away: back off and try again
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
)
def classify_instance(self: PipelineTask, instance_id: int, receive_count: int | None = None) -> None:
    self.pipeline.process(instance_id, receive_count)

"""The Celery application: durable, at-least-once delivery; one instance per task; nothing kept in results."""

from __future__ import annotations

from celery import Celery

from worker.config import WorkerConfig

CLASSIFY_TASK = "triage.classify_instance"


def create_celery(config: WorkerConfig) -> Celery:
    """Build the app for a broker URL; the embedded default is kombu's filesystem transport in the data folder."""
    app = Celery("cxr_triage", broker=config.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,  # a task is acknowledged after it finished, so a crash redelivers it
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results go to the database, not the result backend
        task_default_queue=config.queue,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )
    if config.uses_embedded_broker:
        config.queue_dir.mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {
            "data_folder_in": str(config.queue_dir),
            "data_folder_out": str(config.queue_dir),
            "control_folder": str(config.queue_dir / "control"),
            "polling_interval": 0.1,  # the default 1 s would dominate receive→flag latency
        }
        app.conf.worker_enable_remote_control = False  # the filesystem transport has no fanout
    else:
        # Redis redelivers an unacknowledged task after this long; the outbox sweeper usually acts sooner.
        app.conf.broker_transport_options = {"visibility_timeout": max(3600, int(config.requeue_after_s * 2))}
    app.conf.triage = config
    return app

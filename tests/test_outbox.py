"""The outbox sweeper asks the broker before it republishes: tasks waiting in a backlog are left alone (no no-op
duplicates), tasks the broker lost are published again at once, not after the requeue time. Embedded queue and
Redis alike."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from worker.celery_app import create_celery
from worker.config import WorkerConfig
from worker.outbox import OutboxSweeper, TaskPublisher

from conftest import REDIS_URL, _require_redis
from db_records import receive


@pytest.fixture(params=["embedded", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    queue = f"outbox-test-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        _require_redis()
        yield REDIS_URL, queue
    else:
        yield "filesystem://localhost//", queue


def _sweeper(tmp_path: Path, sessions: sessionmaker[Session], broker_url: str, queue: str,
             requeue_after_s: float) -> OutboxSweeper:
    config = WorkerConfig(database_url="unused", broker_url=broker_url, spool_dir=tmp_path / "spool",
                          rejected_dir=tmp_path / "rejected", queue_dir=tmp_path / "queue", model_path=None,
                          model_cache_dir=tmp_path / "models", queue=queue, requeue_after_s=requeue_after_s,
                          received_grace_s=0.0)
    celery = create_celery(config)
    return OutboxSweeper(config, sessions, TaskPublisher(celery, sessions))


def test_waiting_tasks_are_left_alone_and_lost_ones_published_at_once(
        tmp_path: Path, sessions: sessionmaker[Session], broker: tuple[str, str]) -> None:
    broker_url, queue = broker
    eager = _sweeper(tmp_path, sessions, broker_url, queue, requeue_after_s=0.0)  # the age rule would republish
    items = [receive(sessions, f"6.{i}", "6.9") for i in range(3)]
    for item in items:
        eager.publish(item)
    assert eager.publish.queue_depth(queue) == 3
    assert eager.sweep_once() == 0  # all three are waiting in the queue: no duplicates
    assert eager.publish.queue_depth(queue) == 3
    with eager.publish.celery.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)  # the broker loses them (restart without persistence)
    patient = _sweeper(tmp_path, sessions, broker_url, queue, requeue_after_s=600.0)
    assert patient.sweep_once() == 3  # at once, not after 600 s
    assert patient.publish.queue_depth(queue) == 3
    with patient.publish.celery.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)


def test_task_retries_follow_the_setting(tmp_path: Path) -> None:
    import worker.tasks  # noqa: F401  (registers the task, as the worker's include does)
    from worker.celery_app import CLASSIFY_TASK

    config = WorkerConfig(database_url="unused", broker_url="filesystem://localhost//", spool_dir=tmp_path / "s",
                          rejected_dir=tmp_path / "r", queue_dir=tmp_path / "q", model_path=None,
                          model_cache_dir=tmp_path / "m", max_retries=3)
    celery = create_celery(config)
    assert celery.tasks[CLASSIFY_TASK].max_retries == 3

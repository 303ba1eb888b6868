"""worker.outbox: the publisher notes what it published, and the sweeper republishes each committed instance nobody is
working on, once. Unit tests against a recording broker whose queue depth the test sets (on SQLite and PostgreSQL),
then the same rules against the real brokers: the sweeper asks the broker before it republishes, so tasks waiting in
a backlog are left alone (no no-op duplicates) and tasks the broker lost are published again at once, not after the
requeue time. Embedded queue and Redis alike."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db import ingest
from db.models import Instance, InstanceStatus, utcnow
from worker.celery_app import CLASSIFY_TASK, create_celery
from worker.config import WorkerConfig
from worker.outbox import OutboxSweeper, TaskPublisher

from conftest import REDIS_URL, _require_redis
from db_records import process, receive

REQUEUE_AFTER_S = 600.0
GRACE_S = 60.0  # wide, so that no step of a test, however slow the machine, crosses it


class RecordingCelery:
    """Stands in for the Celery app: records each task sent, or refuses while the broker is "down"."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []
        self.down = False

    def send_task(self, name: str, args: list[Any]) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.sent.append((name, tuple(args)))


class RecordingPublisher(TaskPublisher):
    """The real publisher (it marks what it sent as queued) on a recording broker of a given depth."""

    def __init__(self, sessions: sessionmaker[Session], depth: int | None = None) -> None:
        super().__init__(RecordingCelery(), sessions)  # type: ignore[arg-type]
        self.depth = depth  # messages waiting in the broker's queue; None: the broker cannot be asked

    def queue_depth(self, queue: str) -> int | None:
        return self.depth

    @property
    def sent(self) -> list[tuple[Any, ...]]:
        assert all(name == CLASSIFY_TASK for name, _ in self.celery.sent)
        return [args for _, args in self.celery.sent]


def _unit_sweeper(sessions: sessionmaker[Session], depth: int | None = None) -> OutboxSweeper:
    config = WorkerConfig(database_url="unused", broker_url="memory://", spool_dir=Path("unused"),
                          rejected_dir=Path("unused"), queue_dir=Path("unused"), model_path=None,
                          model_cache_dir=Path("unused"), requeue_after_s=REQUEUE_AFTER_S,
                          received_grace_s=GRACE_S)
    return OutboxSweeper(config, sessions, RecordingPublisher(sessions, depth))


def _aged(sessions: sessionmaker[Session], item: ingest.WorkItem, status: InstanceStatus | None = None,
          **ages: float) -> None:
    """Set the instance's status and its received/enqueued/started times to this many seconds ago."""
    values: dict[str, Any] = {f"{name}_at": utcnow() - timedelta(seconds=age) for name, age in ages.items()}
    if status is not None:
        values["status"] = status
    with sessions.begin() as session:
        session.execute(update(Instance).where(Instance.id == item.instance_id).values(**values))


def _work(item: ingest.WorkItem) -> tuple[int, int]:
    return item.instance_id, item.receive_count


def test_the_sweeper_republishes_each_stranded_instance_once_and_leaves_the_rest(
        sessions: sessionmaker[Session]) -> None:
    items = {name: receive(sessions, f"20.{index}", "s.20") for index, name in enumerate(
        ("never_queued", "just_received", "queued_lately", "queued_long_ago", "abandoned", "working", "finished"))}
    _aged(sessions, items["never_queued"], received=120)  # its publish failed: the broker was down
    _aged(sessions, items["just_received"], received=0)  # its own publish is still on the way
    _aged(sessions, items["queued_lately"], InstanceStatus.QUEUED, received=130, enqueued=120)
    _aged(sessions, items["queued_long_ago"], InstanceStatus.QUEUED, received=3700, enqueued=3600)
    _aged(sessions, items["abandoned"], InstanceStatus.PROCESSING, received=3700, started=3600)  # its worker died
    _aged(sessions, items["working"], InstanceStatus.PROCESSING, received=130, started=120)
    assert process(sessions, items["finished"], 0.2)
    sweeper = _unit_sweeper(sessions)  # a broker that cannot be asked: the age rule decides
    stranded = [_work(items[name]) for name in ("never_queued", "queued_long_ago", "abandoned")]
    assert sweeper.sweep_once() == 3
    assert sweeper.publish.sent == stranded  # each once, in commit order
    with sessions() as session:
        status = {i.id: i.status for i in session.query(Instance)}
    assert status[items["never_queued"].instance_id] == InstanceStatus.QUEUED  # noted: in flight now
    assert status[items["queued_long_ago"].instance_id] == InstanceStatus.QUEUED
    # The republished abandoned claim is picked up (a worker claims it again); the next sweep has nothing to send.
    with sessions.begin() as session:
        assert ingest.claim(session, *_work(items["abandoned"])) is not None
    assert sweeper.sweep_once() == 0 and sweeper.publish.sent == stranded


def test_tasks_waiting_in_the_broker_are_not_published_again(sessions: sessionmaker[Session]) -> None:
    waiting = [receive(sessions, f"21.{index}", "s.21") for index in range(2)]
    for item in waiting:
        _aged(sessions, item, InstanceStatus.QUEUED, received=3700, enqueued=3600)  # a long backlog
    backlog = _unit_sweeper(sessions, depth=2)  # as many messages as queued instances: merely waiting
    assert backlog.sweep_once() == 0 and backlog.publish.sent == []
    fewer = _unit_sweeper(sessions, depth=1)  # one message short: the age rule republishes the old ones
    assert fewer.sweep_once() == 2 and fewer.publish.sent == [_work(item) for item in waiting]


def test_tasks_the_broker_lost_go_out_at_once_not_after_the_requeue_time(sessions: sessionmaker[Session]) -> None:
    lost = receive(sessions, "22.1", "s.22")
    _aged(sessions, lost, InstanceStatus.QUEUED, received=130, enqueued=120)  # well within requeue_after_s
    moments_ago = receive(sessions, "22.2", "s.22")
    _aged(sessions, moments_ago, InstanceStatus.QUEUED, received=0, enqueued=0)  # within the grace period
    emptied = _unit_sweeper(sessions, depth=0)  # an empty queue: the broker restarted without persistence
    assert emptied.sweep_once() == 1 and emptied.publish.sent == [_work(lost)]
    assert emptied.sweep_once() == 0  # noted as queued just now: not sent twice


def test_a_publish_the_broker_refuses_is_left_to_the_sweeper(sessions: sessionmaker[Session]) -> None:
    publisher = RecordingPublisher(sessions)
    publisher.celery.down = True
    item = receive(sessions, "23.1", "s.23")
    publisher(item)  # the listener's publish after the commit: it must not raise (the C-STORE is already good)
    with sessions() as session:
        assert session.get(Instance, item.instance_id).status == InstanceStatus.RECEIVED  # type: ignore[union-attr]
    _aged(sessions, item, received=120)
    sweeper = _unit_sweeper(sessions)
    assert sweeper.sweep_once() == 1 and sweeper.publish.sent == [_work(item)]


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

"""Publishing tasks for committed instances, and the sweeper that republishes whatever was stranded.

The database row is the source of truth (outbox pattern): if the broker is down at commit time, or a worker dies
with a task in hand, the sweeper finds the instance by its status and age and publishes it again. Tasks are
idempotent, so a duplicate costs a no-op, never a second result.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from celery import Celery
from kombu.exceptions import ChannelError
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import WorkItem, mark_queued, queued_count, stranded
from worker.celery_app import CLASSIFY_TASK
from worker.config import WorkerConfig
from worker.periodic import PeriodicTask

log = logging.getLogger(__name__)


class TaskPublisher:
    """Sends one classify task per work item and notes it as queued; failures are left to the sweeper."""

    def __init__(self, celery: Celery, sessions: sessionmaker[Session]) -> None:
        self.celery = celery
        self.sessions = sessions

    def queue_depth(self, queue: str) -> int | None:
        """Messages waiting in the broker's queue (Redis list length, files of the embedded queue); None when
        the broker cannot be asked."""
        try:
            with self.celery.connection_for_read() as connection:
                return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:  # no such queue (e.g. Redis restarted without persistence): nothing is waiting
            return 0
        except Exception as exc:
            log.warning("queue depth unknown (%s)", type(exc).__name__)
            return None

    def __call__(self, item: WorkItem) -> None:
        try:
            self.celery.send_task(CLASSIFY_TASK, args=[item.instance_id, item.receive_count])
        except Exception as exc:  # broker down: the instance stays RECEIVED and the sweeper retries
            log.warning("instance %d committed but not queued (%s); the sweeper will retry", item.instance_id,
                        type(exc).__name__)
            return
        try:
            with self.sessions.begin() as session:
                mark_queued(session, item)
        except Exception as exc:
            log.warning("instance %d queued but not marked (%s)", item.instance_id, type(exc).__name__)


class OutboxSweeper:
    """Periodically republishes committed instances that are neither finished nor in flight."""

    def __init__(self, config: WorkerConfig, sessions: sessionmaker[Session], publish: TaskPublisher) -> None:
        self.config = config
        self.sessions = sessions
        self.publish = publish
        # The first sweep runs in the caller at start (IngestService), then one every interval.
        self._periodic = PeriodicTask("outbox-sweeper", config.sweep_interval_s, lambda: self.sweep_once())

    def sweep_once(self) -> int:
        now = datetime.now(UTC)
        requeue_before = now - timedelta(seconds=self.config.requeue_after_s)
        depth = self.publish.queue_depth(self.config.queue)
        with self.sessions.begin() as session:
            queued_before = self._queued_before(session, depth, now, requeue_before)
            items = stranded(
                session,
                received_before=now - timedelta(seconds=self.config.received_grace_s),
                started_before=requeue_before,
                queued_before=queued_before,
            )
        for item in items:
            self.publish(item)
        if items:
            log.info("outbox sweeper republished %d instance(s)", len(items))
        return len(items)

    def _queued_before(self, session: Session, depth: int | None, now: datetime,
                       requeue_before: datetime) -> datetime:
        """Which queued instances to publish again, asked of the broker rather than guessed from age alone.

        An empty queue means their tasks are gone (a broker restarted without persistence): publish them now, not
        after the requeue time. As many messages as queued instances means they are merely waiting in a backlog:
        publishing again would only add no-op tasks. Fewer messages than instances, or a broker that cannot be
        asked: the age rule (``requeue_after_s``)."""
        if depth == 0:
            return now - timedelta(seconds=self.config.received_grace_s)
        if depth is not None and depth >= queued_count(session):
            return datetime.min.replace(tzinfo=UTC)
        return requeue_before

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

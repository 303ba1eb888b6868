"""Whether the Celery broker can take work, for /healthz and /metrics: the web process has no other reason to
talk to the broker, so the composition root builds this check and hands it to ``worklist.app.create_app``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from worker.celery_app import create_celery
from worker.config import WorkerConfig

log = logging.getLogger(__name__)
TIMEOUT_S = 2.0  # /healthz must answer while a broker host is unreachable; monitors time out after a few seconds


def broker_check(config: WorkerConfig, timeout_s: float = TIMEOUT_S) -> Callable[[], bool]:
    """A callable that connects once (no retry loop) within ``timeout_s``. Redis answers a PING on connect; the
    embedded filesystem queue is up while its folder exists and can be written (kombu itself checks nothing)."""
    app = create_celery(config)

    def reachable() -> bool:
        if config.uses_embedded_broker and not (config.queue_dir.is_dir()
                                                and os.access(config.queue_dir, os.W_OK | os.X_OK)):
            log.warning("broker check: the embedded queue folder is missing or read-only")
            return False
        try:
            with app.connection_for_write(connect_timeout=timeout_s) as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, interval_max=0,
                                             timeout=timeout_s)
            return True
        except Exception as exc:  # kombu raises the transport's own errors (redis, socket, OperationalError)
            log.warning("broker check: the broker is unreachable (%s)", type(exc).__name__)
            return False

    return reachable

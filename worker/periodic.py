"""A job the listener side repeats on a timer in its own thread (outbox sweeper, reporter, retention), so each of
them says only what one pass does."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicTask:
    """Runs ``action`` every ``interval_s`` seconds on a daemon thread until stopped. A failing pass is logged and
    the next one comes on time: a database or peer that is away for a while must not end the loop.
    ``immediately``: the first pass runs at start, not one interval later. Owners pass ``lambda: self.method()``,
    so the method is looked up at each pass (a subclass or a test's replacement is what runs)."""

    def __init__(self, name: str, interval_s: float, action: Callable[[], object], *, immediately: bool = False,
                 join_timeout_s: float = 10.0) -> None:
        self.name = name
        self.interval_s = interval_s
        self.action = action
        self.immediately = immediately
        self.join_timeout_s = join_timeout_s
        self.stopping = threading.Event()  # set by stop(); a long pass may watch it to end early
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        if self.immediately:
            self._pass()
        while not self.stopping.wait(self.interval_s):
            self._pass()

    def _pass(self) -> None:
        try:
            self.action()
        except Exception:
            log.exception("%s pass failed; trying again in %.0f s", self.name, self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout_s)

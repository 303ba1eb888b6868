"""Child processes of the single-machine form: the worker that ``serve`` (and the demo) run beside the listener.

``serve`` must not go on acknowledging C-STOREs that nothing will ever classify: a worker that dies is started
again (with a growing pause if it keeps dying), and no worker outlives its parent, even one killed with SIGKILL,
so a restarted ``serve`` never ends up with two.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends SIGTERM when the parent dies (elsewhere: nothing, best effort).
    Linux counts the *thread* that started the child as its parent: the supervisor's watch thread, which lives as
    long as the supervision does."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


WORKER_COMMAND = [sys.executable, "-m", "triage", "worker"]


def start_child(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``command`` with ``env`` added to ours, ending when this process ends."""
    return subprocess.Popen(command, env={**os.environ, **env},
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Restart:
    at: float  # time.time()
    exit_code: int | None


@dataclass
class WorkerSupervisor:
    """Runs ``cxr-triage worker`` (or ``command``) and starts it again whenever it exits, until ``stop()``."""

    env: dict[str, str]
    command: list[str] = field(default_factory=lambda: list(WORKER_COMMAND))
    check_interval_s: float = 0.5
    max_backoff_s: float = 30.0
    restarts: list[Restart] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self.process = start_child(self.command, self.env)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.process is not None:
            stop_process(self.process)

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stop.wait(self.check_interval_s):
            assert self.process is not None
            code = self.process.poll()
            if code is None:
                if time.time() - (self.restarts[-1].at if self.restarts else 0) > 60:
                    backoff = 1.0  # it has been running a while: the next death restarts promptly again
                continue
            self.restarts.append(Restart(time.time(), code))
            log.error("the worker exited with code %s; starting it again in %.0f s (restart %d)", code, backoff,
                      len(self.restarts))
            if self._stop.wait(backoff):
                return
            backoff = min(self.max_backoff_s, backoff * 2)
            self.process = start_child(self.command, self.env)

"""worker.periodic: the timer thread the outbox sweeper, the reporter and retention share."""

from __future__ import annotations

import threading

from worker.periodic import PeriodicTask

from stack import wait_until


def test_a_failing_pass_is_logged_and_the_next_one_still_comes(caplog) -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("database away")

    task = PeriodicTask("flaky", 0.01, flaky)
    task.start()
    try:
        wait_until(lambda: len(calls) >= 3, 10, "passes after a failure")
    finally:
        task.stop()
    assert "flaky pass failed" in caplog.text
    count = len(calls)
    assert not task._thread.is_alive() and len(calls) == count  # stopped means no further pass


def test_immediately_runs_the_first_pass_at_start_not_one_interval_later() -> None:
    ran = threading.Event()
    late = PeriodicTask("late", 3600, ran.set)
    late.start()
    try:
        assert not ran.wait(0.3)  # an hour's interval: nothing yet
    finally:
        late.stop()
    now = PeriodicTask("now", 3600, ran.set, immediately=True)
    now.start()
    try:
        assert ran.wait(10)
    finally:
        now.stop()
    assert now.stopping.is_set()

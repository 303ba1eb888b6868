"""db.metrics on SQLite and PostgreSQL: what /metrics counts (worklist.metrics turns it into Prometheus families;
tests/test_operations.py scrapes them)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db import ingest
from db import metrics as db_metrics
from db.models import InstanceStatus

from db_records import receive_processed, record


def test_metrics_snapshot_counts_and_histograms(sessions: sessionmaker[Session]) -> None:
    receive_processed(sessions, "9.1", "s.9", 0.05)
    receive_processed(sessions, "9.2", "s.9b", 0.95)
    receive_processed(sessions, "9.3", "s.9c", None, InstanceStatus.FAILED, "NO_PIXEL_DATA")
    with sessions.begin() as session:
        ingest.record_received(session, record("9.4", "s.9d"))  # still waiting
        ingest.record_received(session, record("9.1", "s.9"))  # a resend counts as received again
    with sessions() as session:
        snap = db_metrics.metrics_snapshot(session, [1.0, 60.0], [0.1, 0.5, 1.0])
    assert snap.received == 5
    assert snap.by_status == {"DONE": 1, "FAILED": 1, "RECEIVED": 2}
    assert snap.failed_by_reason == {"NO_PIXEL_DATA": 1}
    histogram = snap.scores["m1"]
    assert histogram.count == 2 and histogram.buckets == [(0.1, 1), (0.5, 1), (1.0, 2)]
    assert histogram.total == pytest.approx(1.0)
    # s.9 is pending again but keeps its last result's latency until the new one is final.
    assert snap.receive_to_flag is not None and snap.receive_to_flag.count == 3
    assert snap.receive_to_flag.buckets[-1] == (60.0, 3)

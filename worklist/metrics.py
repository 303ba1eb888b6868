"""Prometheus metrics, computed from the database at scrape time: the listener, the workers and the web server
are separate processes (and hosts, in a fleet), and the tables already hold every count we need."""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from db import heartbeats, queries, reports

LATENCY_BUCKETS_S = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600]
SCORE_BUCKETS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
PREFIX = "cxr_triage"


def _buckets(histogram: queries.HistogramCounts) -> list[tuple[str, float]]:
    return [(repr(float(bound)), count) for bound, count in histogram.buckets] + [("+Inf", histogram.count)]


class DatabaseCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def describe(self) -> list[Metric]:
        return []  # registering must not touch the database

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            snap = queries.metrics_snapshot(session, LATENCY_BUCKETS_S, SCORE_BUCKETS)
            workers = heartbeats.liveness(session)
            deliveries = reports.delivery_counts(session)
        yield GaugeMetricFamily(f"{PREFIX}_workers_alive", "Worker processes whose heartbeat is recent (0: nothing "
                                "is being classified).", value=workers.alive)
        yield CounterMetricFamily(f"{PREFIX}_instances_received", "Instances committed (C-STORE or import), "
                                  "resent copies included.", value=snap.received)
        processed = CounterMetricFamily(f"{PREFIX}_instances_processed",
                                        "Instances with a final outcome, by outcome (current copy).",
                                        labels=["outcome"])
        for status in ("DONE", "NOT_ANALYSED", "FAILED"):
            processed.add_metric([status.lower()], snap.by_status.get(status, 0))
        yield processed
        failed = CounterMetricFamily(f"{PREFIX}_instances_failed", "Instances that ended FAILED, by reason.",
                                     labels=["reason"])
        for reason, count in sorted(snap.failed_by_reason.items()):
            failed.add_metric([reason], count)
        yield failed
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Instances committed but not finished, by state "
                                  "(received: not yet published; queued; processing).", labels=["state"])
        for status in ("RECEIVED", "QUEUED", "PROCESSING"):
            depth.add_metric([status.lower()], snap.by_status.get(status, 0))
        yield depth
        latency = HistogramMetricFamily(f"{PREFIX}_receive_to_flag_seconds",
                                        "Seconds from a study's latest receive to its final result.")
        if snap.receive_to_flag is not None:
            latency.add_metric([], _buckets(snap.receive_to_flag), snap.receive_to_flag.total)
        yield latency
        scores = HistogramMetricFamily(f"{PREFIX}_score", "Image scores per model version (the start of drift "
                                       "monitoring).", labels=["model_version"])
        for version, histogram in sorted(snap.scores.items()):
            scores.add_metric([version], _buckets(histogram), histogram.total)
        yield scores
        sent = GaugeMetricFamily(f"{PREFIX}_result_deliveries", "Result deliveries to the PACS/RIS by kind (dicom, "
                                 "stow, hl7) and state; dead ones need a person.", labels=["kind", "state"])
        for kind in ("dicom", "stow", "hl7"):
            for state in ("PENDING", "SENDING", "DELIVERED", "DEAD", "SUPERSEDED"):
                sent.add_metric([kind, state.lower()], deliveries.get((kind, state), 0))
        yield sent
        yield GaugeMetricFamily(f"{PREFIX}_untrained_model_in_use",
                                "1 while the model in use has no training metadata (scores are meaningless).",
                                value=1 if snap.untrained_in_use else 0)


class SpoolDiskCollector(Collector):
    """How full the spool's disk is, and the watermark above which C-STOREs are refused."""

    def __init__(self, used_percent: Callable[[], float], watermark_percent: float) -> None:
        self.used_percent = used_percent
        self.watermark_percent = watermark_percent

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}_spool_disk_used_ratio", "Used share of the spool's file system",
                                value=self.used_percent() / 100.0)
        yield GaugeMetricFamily(f"{PREFIX}_spool_disk_watermark_ratio",
                                "Used share above which C-STOREs are refused (0xA700)",
                                value=self.watermark_percent / 100.0)


def make_registry(sessions: sessionmaker[Session], spool_disk_used: Callable[[], float] | None = None,
                  disk_watermark_percent: float = 90.0) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(sessions))
    if spool_disk_used is not None:
        registry.register(SpoolDiskCollector(spool_disk_used, disk_watermark_percent))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

"""Prometheus metrics, computed from the database at scrape time: the listener, the workers and the web server
are separate processes (and hosts, in a fleet), and the tables already hold every count we need.

Because every number is recounted, a counter is only a counter when the rows it counts are never changed back:
received copies (``receive_count`` only grows) and rejections. Everything else is a current state (a resent image
is processed again, a new result replaces the old one) and is a gauge, or a gauge histogram for distributions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import heartbeats, model_registry, reports
from db import metrics as db_metrics

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]
SCORE_BUCKETS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
PREFIX = "cxr_triage"
# DIMSE failure statuses the listener answers with a rejection record (dicom_io.listener; worklist may not import it).
REJECTION_REASONS = {0xA700: "out_of_resources", 0xC210: "cannot_parse", 0xC211: "missing_identifier",
                     0xC212: "invalid_identifier"}


def _buckets(histogram: db_metrics.HistogramCounts) -> list[tuple[str, float]]:
    return [(repr(float(bound)), float(count)) for bound, count in histogram.buckets] + [
        ("+Inf", float(histogram.count))]


@dataclass(frozen=True)
class Reading:
    """Everything one scrape reads, in one session."""

    snap: db_metrics.MetricsSnapshot
    workers: heartbeats.WorkerLiveness
    deliveries: dict[tuple[str, str], int]
    flags: dict[str, db_metrics.ModelFlags]
    not_analysed: dict[str, int]
    rejections: dict[int, int]
    association_refusals: dict[str, int]
    unread_flagged_age_s: float
    models: list[model_registry.RegisteredModel]


def read(sessions: sessionmaker[Session]) -> Reading:
    with sessions() as session:
        return Reading(db_metrics.metrics_snapshot(session, LATENCY_BUCKETS_S, SCORE_BUCKETS),
                       heartbeats.liveness(session), reports.delivery_counts(session),
                       db_metrics.flags_by_model_version(session), db_metrics.not_analysed_by_reason(session),
                       db_metrics.rejections_by_status(session), db_metrics.association_refusals_by_reason(session),
                       db_metrics.unread_flagged_age_s(session),
                       model_registry.registered_models(session))


def _workers(reading: Reading) -> Iterator[Metric]:
    yield GaugeMetricFamily(f"{PREFIX}_workers_alive", "Worker processes whose heartbeat is recent (0: nothing "
                            "is being classified).", value=reading.workers.alive)
    if reading.workers.last_seen_s is not None:
        yield GaugeMetricFamily(f"{PREFIX}_worker_heartbeat_age_seconds", "Seconds since any worker last wrote "
                                "its heartbeat (absent until a worker has run).", value=reading.workers.last_seen_s)


def _instances(reading: Reading) -> Iterator[Metric]:
    snap = reading.snap
    yield CounterMetricFamily(f"{PREFIX}_instances_received", "Instances committed (C-STORE or import), "
                              "resent copies included.", value=snap.received)
    processed = GaugeMetricFamily(f"{PREFIX}_instances_processed", "Instances whose current copy has a final "
                                  "outcome, by outcome (a resent copy leaves it until processed again).",
                                  labels=["outcome"])
    for status in ("DONE", "NOT_ANALYSED", "FAILED"):
        processed.add_metric([status.lower()], snap.by_status.get(status, 0))
    yield processed
    yield _by_reason(f"{PREFIX}_instances_failed", "Instances whose current copy ended FAILED, by reason.",
                     snap.failed_by_reason)
    yield _by_reason(f"{PREFIX}_instances_not_analysed", "Instances whose current copy could not be analysed "
                     "(not a frontal chest image…), by reason.", reading.not_analysed)
    depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Instances committed but not finished, by state "
                              "(received: not yet published; queued; processing).", labels=["state"])
    for status in ("RECEIVED", "QUEUED", "PROCESSING"):
        depth.add_metric([status.lower()], snap.by_status.get(status, 0))
    yield depth


def _by_reason(name: str, documentation: str, counts: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=["reason"])
    for reason, count in sorted(counts.items()):
        family.add_metric([reason], count)
    return family


def _results(reading: Reading) -> Iterator[Metric]:
    snap = reading.snap
    latency = GaugeHistogramMetricFamily(f"{PREFIX}_receive_to_flag_seconds", "Seconds from each finished "
                                         "study's latest receive to its final result (current values).")
    if snap.receive_to_flag is not None:
        latency.add_metric([], _buckets(snap.receive_to_flag), snap.receive_to_flag.total)
    yield latency
    scores = GaugeHistogramMetricFamily(f"{PREFIX}_score", "Current image scores per model version (drift "
                                        "monitoring).", labels=["model_version"])
    for model_version, histogram in sorted(snap.scores.items()):
        scores.add_metric([model_version], _buckets(histogram), histogram.total)
    yield scores
    scored = GaugeMetricFamily(f"{PREFIX}_studies_scored", "Studies whose current result came from this model "
                               "version.", labels=["model_version"])
    flagged = GaugeMetricFamily(f"{PREFIX}_studies_flagged", "Studies flagged by this model version (their "
                                "current result); flagged / scored is the flag rate.", labels=["model_version"])
    for model_version, counts in sorted(reading.flags.items()):
        scored.add_metric([model_version], counts.scored)
        flagged.add_metric([model_version], counts.flagged)
    yield scored
    yield flagged
    yield GaugeMetricFamily(f"{PREFIX}_unread_flagged_oldest_age_seconds", "Seconds since the oldest unread "
                            "flagged study arrived (0: none waits).", value=reading.unread_flagged_age_s)


def _receiving(reading: Reading) -> Iterator[Metric]:
    rejected = CounterMetricFamily(f"{PREFIX}_rejections", "C-STOREs and imports refused with a rejection record "
                                   "(the payload kept for a person), by DIMSE status.", labels=["status", "reason"])
    for status, count in sorted(reading.rejections.items()):
        rejected.add_metric([f"0x{status:04X}", REJECTION_REASONS.get(status, "other")], count)
    yield rejected
    refused = CounterMetricFamily(f"{PREFIX}_associations_refused", "Associations turned away before any C-STORE "
                                  "(calling-ae-not-allowed, called-ae-wrong, association-limit, user-identity, "
                                  "not-loopback): a sender whose setup is wrong, or a full listener.",
                                  labels=["reason"])
    for reason, count in sorted(reading.association_refusals.items()):
        refused.add_metric([reason], count)
    yield refused


def _reporting(reading: Reading) -> Iterator[Metric]:
    sent = GaugeMetricFamily(f"{PREFIX}_result_deliveries", "Result deliveries to the PACS/RIS by kind (dicom, "
                             "stow, hl7) and state; dead ones need a person.", labels=["kind", "state"])
    for kind in ("dicom", "stow", "hl7"):
        for state in ("PENDING", "SENDING", "DELIVERED", "DEAD", "SUPERSEDED"):
            sent.add_metric([kind, state.lower()], reading.deliveries.get((kind, state), 0))
    yield sent


def _models(reading: Reading) -> Iterator[Metric]:
    yield GaugeMetricFamily(f"{PREFIX}_untrained_model_in_use",
                            "1 while the model in use has no training metadata (scores are meaningless).",
                            value=1 if reading.snap.untrained_in_use else 0)
    models = InfoMetricFamily(f"{PREFIX}_model", "Every model a worker has loaded: version, checkpoint sha256 "
                              "(the model's identity) and whether it was trained.")
    for model in reading.models:
        models.add_metric([], {"model_version": model.version, "sha256": model.sha256,
                               "trained": "true" if model.trained else "false"})
    yield models


class DatabaseCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def describe(self) -> list[Metric]:
        return []  # registering must not touch the database

    def collect(self) -> Iterator[Metric]:
        try:
            reading = read(self.sessions)
        except SQLAlchemyError as exc:  # the scrape still answers: database_up 0 is what an alert needs
            log.warning("metrics: the database is unreachable (%s)", type(exc).__name__)
            yield GaugeMetricFamily(f"{PREFIX}_database_up", "1 when the database answered this scrape.", value=0)
            return
        yield GaugeMetricFamily(f"{PREFIX}_database_up", "1 when the database answered this scrape.", value=1)
        for part in (_workers, _instances, _results, _receiving, _reporting, _models):
            yield from part(reading)


class BuildCollector(Collector):
    """What is running: the package version (constant for the process, handed in by the composition root)."""

    def __init__(self, software_version: str) -> None:
        self.software_version = software_version

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(f"{PREFIX}_build", "The cxr-triage package serving this endpoint.",
                               value={"version": self.software_version})


class ProbeCollector(Collector):
    """The checks the composition root hands in: the broker, and how full the spool's disk is."""

    def __init__(self, broker_ok: Callable[[], bool] | None, used_percent: Callable[[], float] | None,
                 watermark_percent: float) -> None:
        self.broker_ok = broker_ok
        self.used_percent = used_percent
        self.watermark_percent = watermark_percent

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.broker_ok is not None:
            yield GaugeMetricFamily(f"{PREFIX}_broker_up", "1 when the Celery broker took a connection.",
                                    value=1 if self.broker_ok() else 0)
        if self.used_percent is not None:
            yield GaugeMetricFamily(f"{PREFIX}_spool_disk_used_ratio", "Used share of the spool's file system",
                                    value=self.used_percent() / 100.0)
            yield GaugeMetricFamily(f"{PREFIX}_spool_disk_watermark_ratio",
                                    "Used share above which C-STOREs are refused (0xA700)",
                                    value=self.watermark_percent / 100.0)


def make_registry(sessions: sessionmaker[Session], spool_disk_used: Callable[[], float] | None = None,
                  disk_watermark_percent: float = 90.0, broker_ok: Callable[[], bool] | None = None,
                  software_version: str = "unknown") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BuildCollector(software_version))
    registry.register(DatabaseCollector(sessions))
    registry.register(ProbeCollector(broker_ok, spool_disk_used, disk_watermark_percent))
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition and its content type: OpenMetrics when the scraper asks for it (Prometheus does), which can
    say "gauge histogram"; otherwise the classic text format, which shows those as histogram buckets plus
    ``_gcount``/``_gsum`` gauges."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type

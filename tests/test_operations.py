"""What operations see: /metrics counted from real rows (SQLite and PostgreSQL), counters that never go down when an
image is sent again, and /healthz answering 503 when the broker is unreachable or the workers stop beating."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_classic
from sqlalchemy import select, update

from db import heartbeats, ingest, model_registry
from db.models import AssociationRefusal, InstanceStatus, Study, WorkerHeartbeat, utcnow
from db.worklist import set_read
from dicom_io.listener import Listener, ListenerConfig
from dicom_io.spool import Spool
from triage.wiring import package_version
from worker.ingest import Ingestor
from worklist.app import create_app
from worklist.schemas import Problem

from db_records import receive
from peers import echoscu, free_port, require_dcmtk
from stack import wait_until

TOKEN = "ops-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPENMETRICS = {**AUTH, "Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
SHA = {"m1": "1" * 64, "m2": "2" * 64}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    app = create_app(database_url, api_token=TOKEN, software_version=package_version())  # as triage.web_server does
    try:
        yield TestClient(app)
    finally:
        app.state.engine.dispose()


def sessions_of(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.sessions  # type: ignore[attr-defined]


def finish(client: TestClient, item: ingest.WorkItem, score: float | None = None, model: str = "m1",
           status: InstanceStatus = InstanceStatus.DONE, reason: str | None = None) -> None:
    """Claim and finish an instance as the worker would, scored by ``model`` (threshold 0.5)."""
    sessions = sessions_of(client)
    with sessions.begin() as session:
        model_registry.register_model(session, sha256=SHA[model], version=model, trained=model == "m2", threshold=0.5,
                               metadata={})
        work = ingest.claim(session, item.instance_id, item.receive_count)
    assert work is not None
    scored = dict(model_version=model, model_sha256=SHA[model], threshold=0.5) if score is not None else {}
    with sessions.begin() as session:
        assert ingest.finish(session, work, ingest.Outcome(status, reason, score=score, **scored))


def reject(client: TestClient, status: int) -> None:
    with sessions_of(client).begin() as session:
        ingest.record_rejection(session, calling_ae="MODALITY", peer="10.0.0.9", status=status,
                                 reason="test payload", payload_path=None, size_bytes=3)


def samples(text: str, parse=parse_classic) -> Samples:  # type: ignore[no-untyped-def]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in parse(text) for s in family.samples}


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    return samples(response.text)


def test_metrics_count_flags_reasons_rejections_models_and_waiting(client: TestClient) -> None:
    sessions = sessions_of(client)
    finish(client, receive(sessions, "1.1", "s1"), 0.9)  # flagged by m1, unread
    finish(client, receive(sessions, "2.1", "s2"), 0.2)  # not flagged
    finish(client, receive(sessions, "3.1", "s3"), 0.8, model="m2")  # flagged by m2, then read
    for sop, study, reason in (("4.1", "s4", "LATERAL_VIEW"), ("5.1", "s5", "LATERAL_VIEW"),
                               ("6.1", "s6", "NOT_CHEST")):
        finish(client, receive(sessions, sop, study), status=InstanceStatus.NOT_ANALYSED, reason=reason)
    for status in (0xC210, 0xC210, 0xC212):
        reject(client, status)
    with sessions.begin() as session:
        set_read(session, "s3", read=True, actor="alice")
        session.execute(update(Study).where(Study.study_instance_uid == "s1")
                        .values(received_at=utcnow() - timedelta(seconds=600)))
        heartbeats.beat(session, "host:1", 1, utcnow())

    metrics = scrape(client)
    expected = {
        ("cxr_triage_studies_flagged", (("model_version", "m1"),)): 1,
        ("cxr_triage_studies_flagged", (("model_version", "m2"),)): 1,  # read studies keep their flag
        ("cxr_triage_studies_scored", (("model_version", "m1"),)): 2,
        ("cxr_triage_studies_scored", (("model_version", "m2"),)): 1,
        ("cxr_triage_instances_not_analysed", (("reason", "LATERAL_VIEW"),)): 2,
        ("cxr_triage_instances_not_analysed", (("reason", "NOT_CHEST"),)): 1,
        ("cxr_triage_rejections_total", (("reason", "cannot_parse"), ("status", "0xC210"))): 2,
        ("cxr_triage_rejections_total", (("reason", "invalid_identifier"), ("status", "0xC212"))): 1,
        ("cxr_triage_model_info", (("model_version", "m1"), ("sha256", SHA["m1"]), ("trained", "false"))): 1,
        ("cxr_triage_model_info", (("model_version", "m2"), ("sha256", SHA["m2"]), ("trained", "true"))): 1,
        ("cxr_triage_build_info", (("version", version("cxr-triage")),)): 1,
        ("cxr_triage_workers_alive", ()): 1,
        ("cxr_triage_database_up", ()): 1,
    }
    assert {key: metrics.get(key) for key in expected} == expected
    assert 600 <= metrics[("cxr_triage_unread_flagged_oldest_age_seconds", ())] < 900  # s1; s3 is read
    assert 0 <= metrics[("cxr_triage_worker_heartbeat_age_seconds", ())] < 15

    with sessions.begin() as session:
        set_read(session, "s1", read=True, actor="alice")
    assert scrape(client)[("cxr_triage_unread_flagged_oldest_age_seconds", ())] == 0  # nothing flagged waits


def _monotonic_families(text: str) -> set[str]:
    return {family.name for family in parse_openmetrics(text) if family.type in ("counter", "histogram", "summary")}


def test_counters_never_go_down_when_an_instance_is_resent(client: TestClient) -> None:
    """The scrapes a Prometheus makes (OpenMetrics) while a scored image and a failed one are sent again and the
    copy scores lower: whatever is typed counter (or histogram) only grows; current states are gauges and drop."""
    sessions = sessions_of(client)
    finish(client, receive(sessions, "7.1", "s7"), 0.9)
    finish(client, receive(sessions, "8.1", "s8"), status=InstanceStatus.FAILED, reason="NO_PIXEL_DATA")
    reject(client, 0xC211)
    scrapes: list[str] = []

    def take() -> None:
        response = client.get("/metrics", headers=OPENMETRICS)
        assert response.headers["content-type"].startswith("application/openmetrics-text"), response.headers
        scrapes.append(response.text)

    take()
    resent = [receive(sessions, "7.1", "s7"), receive(sessions, "8.1", "s8")]  # the commit path, same SOP UIDs
    take()
    finish(client, resent[0], 0.2)  # the new copy scores lower: the study loses its flag
    reject(client, 0xC211)
    take()

    first, middle, last = (samples(text, parse_openmetrics) for text in scrapes)
    assert first[("cxr_triage_instances_processed", (("outcome", "done"),))] == 1
    assert middle[("cxr_triage_instances_processed", (("outcome", "done"),))] == 0  # a gauge may drop…
    assert middle.get(("cxr_triage_instances_failed", (("reason", "NO_PIXEL_DATA"),)), 0) == 0
    assert last[("cxr_triage_studies_flagged", (("model_version", "m1"),))] == 0
    assert last[("cxr_triage_instances_received_total", ())] == first[("cxr_triage_instances_received_total", ())] + 2
    assert last[("cxr_triage_rejections_total", (("reason", "missing_identifier"), ("status", "0xC211")))] == 2
    assert {"cxr_triage_receive_to_flag_seconds", "cxr_triage_score"} <= {
        family.name for family in parse_openmetrics(scrapes[-1]) if family.type == "gaugehistogram"}
    for text, before, after in zip(scrapes[:2], (first, middle), (middle, last), strict=True):  # …a counter never
        monotonic = _monotonic_families(text)
        assert "cxr_triage_instances_received" in monotonic and "cxr_triage_rejections" in monotonic
        for (name, labels), value in before.items():
            if any(name == family or name.startswith(f"{family}_") for family in monotonic):
                assert after.get((name, labels), -1) >= value, (name, labels, value, after.get((name, labels)))


@pytest.mark.peers
def test_refused_associations_are_recorded_and_counted(client: TestClient, tmp_path: Path) -> None:
    """dcmtk's echoscu with an AE title not on the allowlist, and one calling us by another name: each gets an
    A-ASSOCIATE-RJ, a durable row and a count on /metrics by reason; an allowed sender is not counted."""
    require_dcmtk()
    ingestor = Ingestor(Spool(tmp_path / "spool"), sessions_of(client), tmp_path / "rejected",
                        publish=lambda item: None)
    listener = Listener(ListenerConfig("CXR_TRIAGE", "127.0.0.1", free_port(), ["PACS_MAIN"]), ingestor)
    listener.start()
    try:
        assert echoscu(listener.port, calling_aet="PACS_MAIN").returncode == 0
        assert echoscu(listener.port, calling_aet="ROGUE").returncode != 0
        assert echoscu(listener.port, calling_aet="PACS_MAIN", called_aet="OTHER").returncode != 0
        def refusals() -> dict[tuple[tuple[str, str], ...], float] | None:
            counts = {labels: value for (name, labels), value in scrape(client).items()
                      if name == "cxr_triage_associations_refused_total"}
            return counts if sum(counts.values()) >= 2 else None  # recorded just after each RJ went out

        counted = wait_until(refusals, 10, "both refusals on /metrics", interval=0.1)
    finally:
        listener.stop()
    assert counted == {(("reason", "calling-ae-not-allowed"),): 1, (("reason", "called-ae-wrong"),): 1}
    with sessions_of(client)() as session:
        rows = session.scalars(select(AssociationRefusal).order_by(AssociationRefusal.id)).all()
        assert [(r.reason, r.calling_ae, r.called_ae, r.peer.split(":")[0]) for r in rows] == [
            ("calling-ae-not-allowed", "ROGUE", "CXR_TRIAGE", "127.0.0.1"),
            ("called-ae-wrong", "PACS_MAIN", "OTHER", "127.0.0.1")]


def test_metrics_say_the_database_is_down_instead_of_failing(tmp_path: Path) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    app = create_app(f"sqlite:///{tmp_path / 'm.sqlite3'}", api_token=TOKEN)
    app.state.sessions = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'x.sqlite3'}"))
    from worklist import metrics

    app.state.metrics_registry = metrics.make_registry(app.state.sessions)
    response = TestClient(app).get("/metrics", headers=AUTH)
    assert response.status_code == 200 and samples(response.text)[("cxr_triage_database_up", ())] == 0
    app.state.engine.dispose()


def test_health_turns_503_when_the_worker_heartbeat_stops(client: TestClient) -> None:
    sessions = sessions_of(client)
    fresh = client.get("/healthz")
    assert fresh.status_code == 200 and fresh.json()["checks"]["workers"] == "none_seen"  # no worker ever ran
    with sessions.begin() as session:
        heartbeats.beat(session, "host:7", 7, utcnow())
    beating = client.get("/healthz").json()
    assert beating["checks"]["workers"] == "ok" and beating["workers_alive"] == 1
    with sessions.begin() as session:  # its last beat is now older than the liveness window: the worker stopped
        session.execute(update(WorkerHeartbeat).values(last_seen=utcnow() - timedelta(seconds=60)))
    stopped = client.get("/healthz")
    assert stopped.status_code == 503 and stopped.headers["content-type"] == "application/problem+json"
    body = Problem.model_validate(stopped.json())
    assert body.checks is not None and body.checks.workers == "down" and body.checks.database == "ok"
    assert "heartbeat" in (body.detail or "")
    with sessions.begin() as session:
        heartbeats.beat(session, "host:8", 8, utcnow())  # a new worker
    assert client.get("/healthz").status_code == 200


def _web_app(tmp_path: Path, broker_url: str) -> TestClient:
    """The app as `cxr-triage web` builds it (triage.cli.web_server), with its broker check."""
    from triage.settings import Settings
    from triage.web_server import web_server

    settings = Settings(data_dir=tmp_path / "var", broker_url=broker_url)
    settings.ensure_dirs()
    return TestClient(web_server(settings).config.app, base_url="http://127.0.0.1")


def _broker_state(client: TestClient) -> tuple[int, str, float]:
    health = client.get("/healthz")
    metrics = samples(client.get("/metrics").text)
    return health.status_code, health.json()["checks"]["broker"], metrics[("cxr_triage_broker_up", ())]


def test_health_reports_an_unreachable_redis_broker(tmp_path: Path) -> None:
    from conftest import REDIS_URL, _require_redis
    from peers import free_port

    closed = _web_app(tmp_path / "closed", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    assert _broker_state(closed) == (503, "down", 0)
    assert "broker" in closed.get("/healthz").json()["detail"]
    _require_redis()
    assert _broker_state(_web_app(tmp_path / "redis", REDIS_URL)) == (200, "ok", 1)


def test_health_reports_the_embedded_broker_folder(tmp_path: Path) -> None:
    embedded = _web_app(tmp_path, "")
    assert _broker_state(embedded) == (200, "ok", 1)
    shutil.rmtree(tmp_path / "var" / "queue")  # where the filesystem transport keeps its messages
    assert _broker_state(embedded) == (503, "down", 0)

"""The REST API and the pages' access rules: bearer tokens (named, for the audit), the /login cookie for the page,
CSRF on forms, RFC 9457 problems for errors, the audit table, pictures, metrics and the model card."""

from __future__ import annotations

import re
from datetime import UTC
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from db import ingest, model_registry
from db.models import AuditEvent, InstanceStatus
from worklist.app import create_app

AUTH = {"Authorization": "Bearer s3cret"}
HTML = {"Accept": "text/html"}
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(f"sqlite:///{tmp_path / 'api.sqlite3'}", api_token="s3cret",
                                 api_tokens="alice=tok-alice,bob=tok-bob", model_card=tmp_path / "MODEL_CARD.md"))


def add_study(client: TestClient, study: str, sop: str, score: float | None = 0.7, preview: Path | None = None,
              status: InstanceStatus = InstanceStatus.DONE, reason: str | None = None) -> None:
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    record = ingest.ReceivedRecord(
        sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1", study_instance_uid=study,
        series_instance_uid="1.2.3", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CR", body_part="CHEST",
        view_position="PA", patient_name="DOE^JANE", patient_id="P1", accession_number="A1", study_date=None,
        study_description="XR CHEST", spool_path=f"/spool/{sop}.dcm", size_bytes=10, calling_ae="TEST")
    with sessions.begin() as session:
        item = ingest.record_received(session, record)
        model_registry.register_model(session, sha256="a" * 64, version="m1", trained=False, threshold=0.5, metadata={})
    with sessions.begin() as session:
        work = ingest.claim(session, item.instance_id)
    model = dict(model_version="m1", model_sha256="a" * 64, threshold=0.5) if score is not None else {}
    pictures = dict(preview_path=str(preview), heatmap_path=str(preview)) if preview else {}
    with sessions.begin() as session:
        assert work is not None
        ingest.finish(session, work, ingest.Outcome(status, reason, score=score, **model, **pictures))


def audit_rows(client: TestClient) -> list[tuple[str, str, str | None]]:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        return [(e.actor, e.action, e.study_instance_uid)
                for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_api_refuses_requests_without_the_token(client: TestClient) -> None:
    for path in ("/api/worklist", "/api/studies/1.2.3", "/api/worklist/version", "/api/studies/1.2.3/version",
                 "/api/models", "/metrics"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["status"] == 401
    assert client.put("/api/studies/1.2.3/read").status_code == 401
    ok = client.get("/api/worklist", headers=AUTH)
    assert ok.status_code == 200 and ok.json()["items"] == [] and ok.json()["total"] == 0
    assert audit_rows(client) == [("api-token", "list", None)]  # refusals read nothing


def test_unknown_study_is_a_404_problem(client: TestClient) -> None:
    response = client.get("/api/studies/1.2.3", headers=AUTH)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": "Not Found", "status": 404,
                               "detail": "study not found", "instance": "/api/studies/1.2.3"}
    assert client.get("/api/no-such-route", headers=AUTH).headers["content-type"] == "application/problem+json"
    version = client.get("/api/studies/1.2.3/version", headers=AUTH)
    assert version.status_code == 404 and version.json()["detail"] == "study not found"
    add_study(client, "1.2.3", "1.2.3.1")
    token = client.get("/api/studies/1.2.3/version", headers=AUTH).json()["version"]
    assert len(token) == 16 and client.put("/api/studies/1.2.3/read", headers=AUTH).status_code == 200
    assert client.get("/api/studies/1.2.3/version", headers=AUTH).json()["version"] != token


def test_the_study_version_carries_the_worklists_unread_flagged_count(client: TestClient) -> None:
    """An open study page polls one URL a tick: its version tells it when to refresh, and unread_flagged (the
    whole worklist's count, as /api/worklist/version gives it) raises the new-flag alerts."""
    def counts() -> tuple[int, int]:
        study = client.get("/api/studies/2.1/version", headers=AUTH)
        listed = client.get("/api/worklist/version", headers=AUTH)
        assert study.status_code == 200 and listed.status_code == 200
        assert set(study.json()) == {"version", "unread_flagged"}
        return study.json()["unread_flagged"], listed.json()["unread_flagged"]

    add_study(client, "2.1", "2.1.1", score=0.2)  # the open study: not flagged
    assert counts() == (0, 0)
    add_study(client, "2.2", "2.2.1", score=0.9)  # flags raised elsewhere on the worklist
    add_study(client, "2.3", "2.3.1", score=0.8)
    assert counts() == (2, 2)
    assert client.put("/api/studies/2.2/read", headers=AUTH).status_code == 200
    assert counts() == (1, 1)
    assert client.put("/api/studies/2.1/read", headers=AUTH).status_code == 200  # the open study is not flagged
    assert counts() == (1, 1)
    assert client.get("/api/studies/9.9/version", headers=AUTH).status_code == 404  # no count for a missing study


def test_bad_filter_is_a_client_error(client: TestClient) -> None:
    response = client.get("/api/worklist?status=NOPE", headers=AUTH)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["query", "status"]
    assert client.get("/api/worklist?q=a%00b", headers=AUTH).status_code == 422  # no NUL reaches PostgreSQL
    assert client.get("/api/studies/1.2%0A3", headers=AUTH).status_code == 422


def test_health_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {  # no worker has run against this database yet: not a failure
        "status": "ok", "checks": {"database": "ok", "broker": "not_checked", "workers": "none_seen",
                                   "spool_disk": "not_checked"},
        "workers_alive": 0, "worker_last_seen_s": None, "worker_restarts": None, "spool_disk_used_percent": None,
        "disk_watermark_percent": 90.0}


def test_named_tokens_are_who_the_audit_records(client: TestClient) -> None:
    add_study(client, "9.1", "9.1.1")
    assert client.get("/api/studies/9.1", headers={"Authorization": "Bearer tok-alice"}).status_code == 200
    assert client.put("/api/studies/9.1/read", headers={"Authorization": "Bearer tok-bob"}).json()["read_by"] == "bob"
    assert client.get("/api/studies/9.1", headers=AUTH).json()["read"] is True
    assert audit_rows(client) == [("alice", "api", "9.1"), ("bob", "mark_read", "9.1"), ("api-token", "api", "9.1")]
    events = client.get("/api/studies/9.1/audit", headers=AUTH).json()
    assert [e["actor"] for e in events] == ["api-token", "bob", "alice"]  # newest first
    unread = client.delete("/api/studies/9.1/read", headers=AUTH).json()
    assert unread == {"study_uid": "9.1", "read": False, "read_at": None, "read_by": None}
    assert client.put("/api/studies/9.9/read", headers=AUTH).status_code == 404


def test_the_page_signs_in_with_a_token_and_keeps_a_cookie(client: TestClient) -> None:
    add_study(client, "8.1", "8.1.1")
    first = client.get("/studies/8.1?back=flag%3Dflagged", headers=HTML, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/login?next=")
    assert "DOE^JANE" not in client.get("/login", headers=HTML).text
    refused = client.post("/login", data={"token": "nope", "next": "/"}, headers=HTML)
    assert refused.status_code == 401 and "not valid" in refused.text
    signed_in = client.post("/login", data={"token": "tok-alice", "next": "/studies/8.1"}, follow_redirects=False)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/studies/8.1"
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = client.get("/studies/8.1", headers=HTML)
    assert page.status_code == 200 and "DOE, JANE" in page.text and "Signed in as <strong>alice</strong>" in page.text
    assert client.get("/api/worklist/version").status_code == 200  # the page's live updates use the cookie
    assert ("alice", "view", "8.1") in audit_rows(client)
    # Sending someone elsewhere after login is not possible.
    assert client.post("/login", data={"token": "tok-alice", "next": "//evil.example/x"},
                       follow_redirects=False).headers["location"] == "/"
    client.cookies.set("cxr_triage_session", "0" * 64 + ".alice")
    assert client.get("/api/worklist/version").status_code == 401


def test_mark_read_form_needs_its_csrf_token(client: TestClient) -> None:
    add_study(client, "7.1", "7.1.1")
    client.post("/login", data={"token": "tok-bob", "next": "/"})
    page = client.get("/studies/7.1", headers=HTML).text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf is not None
    forged = client.post("/studies/7.1/read", data={"action": "read"}, headers=HTML)
    assert forged.status_code == 403
    done = client.post("/studies/7.1/read", data={"action": "read", "csrf": csrf[1], "back": "read=unread"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/studies/7.1?back=read%3Dunread"
    assert client.get("/api/studies/7.1", headers=AUTH).json()["read_by"] == "bob"


def test_pictures_are_served_and_their_reads_audited(client: TestClient, tmp_path: Path) -> None:
    picture = tmp_path / "p.png"
    picture.write_bytes(PNG_BYTES)
    add_study(client, "6.1", "6.1.1", preview=picture)
    add_study(client, "6.2", "6.2.1", score=None, status=InstanceStatus.NOT_ANALYSED, reason="LATERAL_VIEW")
    detail = client.get("/api/studies/6.1", headers=AUTH).json()
    instance = detail["instances"][0]
    assert instance["preview_url"] == "/api/studies/6.1/images/6.1.1/preview.png"
    for url in (instance["preview_url"], instance["heatmap_url"]):
        response = client.get(url, headers=AUTH)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == PNG_BYTES and "no-store" in response.headers["cache-control"]
    missing = client.get("/api/studies/6.2/images/6.2.1/preview.png", headers=AUTH)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert client.get("/api/studies/6.2/images/6.1.1/preview.png", headers=AUTH).status_code == 404  # other study
    picture.unlink()
    assert client.get(instance["preview_url"], headers=AUTH).status_code == 404
    assert [row for row in audit_rows(client) if row[1] == "image"] == [("api-token", "image", "6.1")] * 2


def test_metrics_need_the_token_and_count_from_the_database(client: TestClient) -> None:
    add_study(client, "5.1", "5.1.1", score=0.7)
    add_study(client, "5.2", "5.2.1", score=None, status=InstanceStatus.FAILED, reason="NO_PIXEL_DATA")
    text = client.get("/metrics", headers=AUTH).text
    assert "cxr_triage_instances_received_total 2.0" in text
    assert 'cxr_triage_instances_processed{outcome="done"} 1.0' in text  # current states: gauges
    assert 'cxr_triage_instances_failed{reason="NO_PIXEL_DATA"} 1.0' in text
    assert 'cxr_triage_queue_depth{state="queued"} 0.0' in text
    assert 'cxr_triage_score_bucket{le="0.7",model_version="m1"} 1.0' in text
    assert 'cxr_triage_score_bucket{le="0.6",model_version="m1"} 0.0' in text
    assert "cxr_triage_receive_to_flag_seconds_gcount 2.0" in text  # a gauge histogram: values are replaced
    assert "cxr_triage_untrained_model_in_use 1.0" in text


def test_model_card_is_served_when_it_exists(client: TestClient, tmp_path: Path) -> None:
    absent = client.get("/api/model-card", headers=AUTH)
    assert absent.status_code == 404 and "no model card" in absent.json()["detail"]
    client.post("/login", data={"token": "tok-alice", "next": "/"})
    assert "model/MODEL_CARD.md</code> is absent" in client.get("/model", headers=HTML).text
    (tmp_path / "MODEL_CARD.md").write_text("# ResNet50 CXR\nIntended use: triage.\n")
    assert client.get("/api/model-card", headers=AUTH).text.startswith("# ResNet50 CXR")
    assert "Intended use: triage." in client.get("/model", headers=HTML).text
    assert client.get("/api/models", headers=AUTH).json()["model_card_available"] is True


def test_pages_say_triage_support_and_lock_themselves_down(client: TestClient) -> None:
    add_study(client, "4.1", "4.1.1")
    client.post("/login", data={"token": "tok-alice", "next": "/"})
    for path in ("/", "/studies/4.1", "/model"):
        page = client.get(path, headers=HTML)
        assert page.status_code == 200
        assert "Triage support only — not a diagnosis." in page.text
        assert "UNTRAINED MODEL — scores are meaningless" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
    assert client.get("/studies/nope", headers=HTML).status_code == 404
    assert "text/html" in client.get("/studies/nope", headers=HTML).headers["content-type"]


def test_without_a_token_everyone_is_the_loopback_demo(tmp_path: Path) -> None:
    client = TestClient(create_app(f"sqlite:///{tmp_path / 'demo.sqlite3'}"), base_url="http://127.0.0.1:8000")
    add_study(client, "3.1", "3.1.1")
    assert client.get("/api/studies/3.1").status_code == 200
    assert client.get("/login", follow_redirects=False).status_code == 303
    assert audit_rows(client) == [("loopback-demo", "api", "3.1")]
    for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
        assert client.get("/api/studies/3.1", headers={"Host": host}).status_code == 200, host
    for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", "10.0.0.5:8000"):
        rebound = client.get("/api/studies/3.1", headers={"Host": host})  # DNS rebinding: refused
        assert rebound.status_code == 421, host
        assert rebound.headers["content-type"] == "application/problem+json"
    assert audit_rows(client) == [("loopback-demo", "api", "3.1")] * 4  # the refused requests saw nothing


def test_a_crash_is_a_500_problem_without_details_and_health_says_503(client: TestClient, tmp_path: Path) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    broken = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'x.sqlite3'}"))
    client.app.state.sessions = broken  # type: ignore[attr-defined]
    quiet = TestClient(client.app, raise_server_exceptions=False)
    response = quiet.get("/api/worklist", headers=AUTH)
    assert response.status_code == 500 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Internal Server Error" and "sqlite" not in response.text.lower()
    health = quiet.get("/healthz")
    assert health.status_code == 503 and health.json()["detail"] == "the database is unreachable"


def test_page_and_api_speak_the_sites_time_zone(tmp_path: Path) -> None:
    from datetime import datetime

    from sqlalchemy import update

    from db.models import Study

    client = TestClient(create_app(f"sqlite:///{tmp_path / 'tz.sqlite3'}", api_token="s3cret",
                                   timezone="America/New_York"))
    add_study(client, "1.2.840.9", "1.2.840.9.1")
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        session.execute(update(Study).values(received_at=datetime(2026, 11, 26, 3, 0, 5, tzinfo=UTC)))
    page = client.get("/", headers=AUTH | HTML)
    assert "2026-11-25 22:00:05" in page.text and "Times are America/New_York." in page.text
    assert 'datetime="2026-11-26T03:00:05+00:00"' in page.text  # machine-readable time stays UTC
    study = client.get("/studies/1.2.840.9", headers=AUTH | HTML)
    assert "Received (America/New_York)" in study.text and "2026-11-25 22:00:05" in study.text
    day = lambda d: [e["study_uid"] for e in client.get(  # noqa: E731
        f"/api/worklist?received_from={d}&received_to={d}", headers=AUTH).json()["items"]]
    assert day("2026-11-25") == ["1.2.840.9"] and day("2026-11-26") == []
    assert "1.2.840.9" in client.get("/?received_from=2026-11-25&received_to=2026-11-25", headers=AUTH | HTML).text
    assert "1.2.840.9" not in client.get("/?received_from=2026-11-26", headers=AUTH | HTML).text


def test_settings_and_cli_refuse_an_unknown_time_zone() -> None:
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from triage.main import app
    from triage.settings import Settings

    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        Settings(_env_file=None, timezone="Mars/Olympus")
    assert Settings(_env_file=None, timezone="Europe/Berlin").timezone == "Europe/Berlin"
    result = CliRunner().invoke(app, ["worklist"], env={"TRIAGE_TIMEZONE": "Mars/Olympus"})
    assert result.exit_code == 2 and "TRIAGE_TIMEZONE: Value error, unknown time zone" in result.output
    assert "Traceback" not in result.output


def test_sessions_are_new_per_sign_in_and_end_at_sign_out(client: TestClient) -> None:
    first = client.post("/login", data={"token": "tok-alice", "next": "/"}, follow_redirects=False)
    first_cookie = first.cookies["cxr_triage_session"]
    client.cookies.clear()
    second = client.post("/login", data={"token": "tok-alice", "next": "/"}, follow_redirects=False)
    second_cookie = second.cookies["cxr_triage_session"]
    assert first_cookie != second_cookie  # random per sign-in, not derived from the token
    client.cookies.set("cxr_triage_session", second_cookie)
    assert client.get("/api/worklist").status_code == 200
    page = client.get("/", headers=HTML).text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf is not None
    assert client.post("/logout", data={"csrf": csrf[1]}, follow_redirects=False).status_code == 303
    client.cookies.set("cxr_triage_session", second_cookie)  # a copy of the cookie kept after sign-out
    assert client.get("/api/worklist").status_code == 401
    client.cookies.set("cxr_triage_session", first_cookie)  # the other sign-in's session lives on
    assert client.get("/api/worklist").status_code == 200


def test_failed_sign_ins_are_audited_and_throttled(client: TestClient) -> None:
    for _ in range(10):
        assert client.post("/login", data={"token": "guess", "next": "/"}, headers=HTML).status_code == 401
    eleventh = client.post("/login", data={"token": "tok-alice", "next": "/"}, follow_redirects=False)
    assert eleventh.status_code == 429 and int(eleventh.headers["retry-after"]) > 0  # even the right token waits
    assert eleventh.headers["content-type"] == "application/problem+json"
    failed = [row for row in audit_rows(client) if row[1] == "login_failed"]
    assert len(failed) == 11 and all(actor == "unknown" for actor, _, _ in failed)


def test_api_documents_need_the_token_and_foreign_origins_cannot_change_state(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=AUTH).status_code == 200, path
    add_study(client, "9.1", "9.1.1")
    client.post("/login", data={"token": "tok-alice", "next": "/"})
    foreign = client.put("/api/studies/9.1/read", json={"read": True}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    own = client.put("/api/studies/9.1/read", json={"read": True}, headers={"Origin": "http://testserver"})
    assert own.status_code == 200

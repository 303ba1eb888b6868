"""The REST API: bearer token when configured, RFC 9457 problems for errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from worklist.app import create_app


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(f"sqlite:///{tmp_path / 'api.sqlite3'}", api_token="s3cret"))


def test_api_refuses_requests_without_the_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = client.get("/api/worklist", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 401
    ok = client.get("/api/worklist", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["items"] == []


def test_unknown_study_is_a_404_problem(client: TestClient) -> None:
    response = client.get("/api/studies/1.2.3", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 404
    assert response.json() == {"type": "about:blank", "title": "study not found", "status": 404}


def test_bad_filter_is_a_client_error(client: TestClient) -> None:
    response = client.get("/api/worklist?status=NOPE", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["query", "status"]


def test_health_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}

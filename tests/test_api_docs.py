"""The API documentation: an OpenAPI document a client can be generated from (tags, readable operation ids, a
description on every field, RFC 9457 problems on every error), and /docs and /redoc that render in a real headless
Chromium with every host but this server blocked, behind the same sign-in as the API."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from worklist.app import create_app

TOKEN = "docs-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM_REF = "#/components/schemas/Problem"
METHODS = {"get", "put", "post", "delete", "patch"}
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(f"sqlite:///{tmp_path_factory.mktemp('docs') / 'docs.sqlite3'}", api_token=TOKEN)
    yield TestClient(app)
    app.state.engine.dispose()


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json", headers=AUTH)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield f"{method.upper()} {path}", operation


def test_every_operation_has_a_declared_tag_and_a_readable_operation_id(document: dict[str, Any]) -> None:
    declared = {tag["name"] for tag in document["tags"]}
    assert declared >= {"worklist", "studies", "images", "model", "operations"}
    ids = []
    for label, operation in operations(document):
        assert operation.get("tags") and set(operation["tags"]) <= declared, label
        operation_id = operation.get("operationId", "")
        # FastAPI's generated ids look like api_study_api_studies__study_uid__get: function, path and method.
        assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", operation_id), (label, operation_id)
        assert operation.get("summary"), label
        ids.append(operation_id)
    assert len(ids) == len(set(ids)) and {"getWorklist", "getStudy", "markStudyRead", "getHealth"} <= set(ids)


def _schema_properties(name: str, schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for prop, spec in schema.get("properties", {}).items():
        yield f"{name}.{prop}", spec


def test_every_property_of_every_schema_is_described(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    undescribed = [name for schema_name, schema in schemas.items()
                   for name, spec in _schema_properties(schema_name, schema) if not spec.get("description")]
    assert undescribed == []
    for main in ("Worklist", "WorklistItem", "StudyDetail", "InstanceItem", "Models", "Health", "Problem", "ReadState"):
        schema = schemas[main]
        examples = bool(schema.get("examples")) or any(spec.get("examples") for spec in schema["properties"].values())
        assert examples, f"{main} has no examples"


def test_every_error_response_is_a_problem(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["properties"])
    seen: set[str] = set()
    for label, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            seen.add(status)
            assert response.get("description"), (label, status)
            assert response.get("content") == {"application/problem+json": {"schema": {"$ref": PROBLEM_REF}}}, (
                label, status, response)
    assert seen >= {"401", "403", "404", "422", "503"}


def test_not_found_descriptions_name_what_is_missing(document: dict[str, Any]) -> None:
    described = {label: op["responses"]["404"]["description"] for label, op in operations(document)
                 if "404" in op["responses"]}
    assert "model card" in described["GET /api/model-card"] and "study" not in described["GET /api/model-card"]
    assert "image" in described["GET /api/studies/{study_uid}/images/{sop_instance_uid}/preview.png"]
    assert described["GET /api/studies/{study_uid}"] == "No such study"


def test_docs_stay_behind_the_sign_in_and_name_no_other_host(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 401, path
        page = client.get(path, headers=AUTH)
        assert page.status_code == 200, path
        assert not re.search(r"(src|href|url)\s*[=:]\s*['\"]?(https?:)?//", page.text), (path, page.text[:2000])
    swagger = client.get("/docs", headers=AUTH)
    assert "default-src 'none'" in swagger.headers["content-security-policy"]
    for asset in re.findall(r"(?:src|href)=\"(/[^\"]+)\"", swagger.text + client.get("/redoc", headers=AUTH).text):
        response = client.get(asset)  # public library code, cached like the page's own assets
        assert response.status_code == 200 and len(response.content) > 1000, asset


# --- a real browser, offline --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`cxr-triage web` as the composition root builds it, on a free port, in this process."""
    from triage.settings import Settings
    from triage.web_server import web_server

    from peers import free_port, wait_for_port

    port = free_port()
    settings = Settings(data_dir=tmp_path_factory.mktemp("docs-web") / "var", web_port=port, api_token=TOKEN)
    settings.ensure_dirs()
    uvicorn_server = web_server(settings)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    try:
        wait_for_port("127.0.0.1", port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Browser:
    page: Any
    blocked: list[str] = field(default_factory=list)  # requests for other hosts, aborted
    errors: list[str] = field(default_factory=list)  # script errors and console errors (CSP refusals among them)


@pytest.fixture
def browser(server: str) -> Iterator[Browser]:
    """A signed-in Chromium whose requests may reach this server only."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is in the dev extras")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: .ci/run installs Debian's chromium")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = chromium.new_context(base_url=server, viewport={"width": 1440, "height": 900})
        state = Browser(context.new_page())

        def only_this_server(route: Any) -> None:
            if route.request.url.startswith(f"{server}/"):
                route.continue_()
            else:  # a CDN, a font service, a validator: offline there is none
                state.blocked.append(route.request.url)
                route.abort()

        context.route("**/*", only_this_server)
        state.page.set_default_timeout(UI_TIMEOUT_MS)
        state.page.on("pageerror", lambda error: state.errors.append(str(error)))
        state.page.on("console",
                      lambda message: state.errors.append(message.text) if message.type == "error" else None)
        state.page.goto("/login?next=%2Fdocs")
        state.page.fill("#token", TOKEN)
        state.page.click("button[type=submit]")
        state.page.wait_for_url("**/docs")
        try:
            yield state
        finally:
            chromium.close()


def test_swagger_ui_renders_every_operation_offline(browser: Browser, document: dict[str, Any]) -> None:
    page = browser.page
    page.locator(".opblock-summary-operation-id").get_by_text("getWorklist", exact=True).wait_for()
    page.get_by_text("The prioritized worklist (filters, sort, paging)").first.wait_for()
    shown = set(page.locator(".opblock-summary-operation-id").all_inner_texts())
    assert shown == {op["operationId"] for _, op in operations(document)}
    assert page.locator(".opblock-tag").count() == len(document["tags"])
    assert browser.blocked == [] and browser.errors == []


def test_redoc_renders_offline(browser: Browser) -> None:
    page = browser.page
    page.goto("/redoc")
    page.get_by_role("heading", name="The prioritized worklist (filters, sort, paging)").wait_for()
    page.get_by_text("RFC 9457").first.wait_for()
    assert browser.blocked == []
    # ReDoc always shows Redocly's logo from its CDN; the docs' CSP refuses it before any request is made.
    assert [e for e in browser.errors if "cdn.redoc.ly/redoc/logo-mini.svg" not in e] == [], browser.errors

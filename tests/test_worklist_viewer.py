"""The link to the site's image viewer (TRIAGE_VIEWER_URL) and the page's reading aids without a browser: the
template filled with URL-encoded values in one pass, refused when it is not an http(s) URL or names an unknown
placeholder, absent (None) when not configured; carried by the API's items and study, shown on the pages; the
tab title's count; the study page's place in the list surviving a mark-read; the waiting and age/sex words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from db.worklist import set_read
from triage.settings import Settings
from worklist.app import create_app
from worklist.presentation import age_sex, age_sex_words, check_viewer_template, viewer_url, waiting

from db_records import process, receive

TEMPLATE = "https://pacs.example/viewer?StudyInstanceUIDs={study_uid}&acc={accession}&pid={patient_id}"
HTML = {"Accept": "text/html"}


def test_viewer_url_fills_each_placeholder_url_encoded_in_one_pass() -> None:
    assert viewer_url(TEMPLATE, "1.2.840.1", "A1", "P1") == \
        "https://pacs.example/viewer?StudyInstanceUIDs=1.2.840.1&acc=A1&pid=P1"
    url = viewer_url(TEMPLATE, "1.2.3", "A&B=1 #2/x", "{study_uid} ZOË")
    assert url == ("https://pacs.example/viewer?StudyInstanceUIDs=1.2.3&acc=A%26B%3D1%20%232%2Fx"
                   "&pid=%7Bstudy_uid%7D%20ZO%C3%8B")  # a value can neither end its parameter nor add a placeholder
    assert viewer_url("https://v.example/{study_uid}/{study_uid}", "9.8", None, None) == "https://v.example/9.8/9.8"
    assert viewer_url(TEMPLATE, "1.2.3", None, None) == \
        "https://pacs.example/viewer?StudyInstanceUIDs=1.2.3&acc=&pid="


@pytest.mark.parametrize("empty", ["", "   "])
def test_no_viewer_configured_means_no_link(empty: str) -> None:
    assert viewer_url(empty, "1.2.3", "A1", "P1") is None
    assert check_viewer_template(empty) == ""


@pytest.mark.parametrize("bad", ["javascript:alert(1)//{study_uid}", "data:text/html,{study_uid}",
                                 "//pacs.example/{study_uid}", "pacs.example/{study_uid}",
                                 "https://pacs.example/{study}", "https://pacs.example/{StudyInstanceUID}",
                                 "https://pacs.example/a b/{study_uid}", "https:///{study_uid}"])
def test_a_viewer_template_that_is_not_an_http_url_with_known_placeholders_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_viewer_template(bad)
    with pytest.raises(ValidationError):
        Settings(viewer_url=bad)
    with pytest.raises(ValueError):
        create_app("sqlite://", viewer_url_template=bad)


def test_the_setting_is_read_from_the_environment_and_reaches_the_web_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from triage.web_server import web_server

    monkeypatch.setenv("TRIAGE_VIEWER_URL", f" {TEMPLATE} ")
    settings = Settings(data_dir=tmp_path / "var")
    assert settings.viewer_url == TEMPLATE
    settings.ensure_dirs()
    server = web_server(settings)
    app = server.config.app
    try:
        assert app.state.viewer_url_template == TEMPLATE  # type: ignore[attr-defined]
    finally:
        app.state.engine.dispose()  # type: ignore[attr-defined]
    assert Settings(data_dir=tmp_path / "var", viewer_url="").viewer_url == ""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(f"sqlite:///{tmp_path / 'viewer.sqlite3'}", viewer_url_template=TEMPLATE)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client
    app.state.engine.dispose()


def _add(client: TestClient, study: str, score: float | None, **fields: object) -> None:
    item = receive(client.app.state.sessions, f"{study}.1", study, **fields)  # type: ignore[attr-defined]
    if score is not None:
        assert process(client.app.state.sessions, item, score)  # type: ignore[attr-defined]


def test_api_items_and_the_study_carry_the_viewer_url(client: TestClient, tmp_path: Path) -> None:
    _add(client, "1.2.3", 0.9, accession_number="A/1 #", patient_id="P&1")
    expected = "https://pacs.example/viewer?StudyInstanceUIDs=1.2.3&acc=A%2F1%20%23&pid=P%261"
    [item] = client.get("/api/worklist").json()["items"]
    assert item["viewer_url"] == expected
    assert client.get("/api/studies/1.2.3").json()["viewer_url"] == expected

    plain = create_app(f"sqlite:///{tmp_path / 'viewer.sqlite3'}")  # the same data, no viewer configured
    try:
        with TestClient(plain, base_url="http://127.0.0.1") as other:
            assert other.get("/api/worklist").json()["items"][0]["viewer_url"] is None
            assert other.get("/api/studies/1.2.3").json()["viewer_url"] is None
            assert "viewer-link" not in other.get("/", headers=HTML).text
            assert "Open in viewer" not in other.get("/studies/1.2.3", headers=HTML).text
    finally:
        plain.state.engine.dispose()


def test_pages_link_the_viewer_in_a_new_tab_and_count_unread_flags_in_the_title(client: TestClient) -> None:
    _add(client, "1.2.3", 0.9, patient_name="SMITH^MARIA")
    _add(client, "1.2.4", 0.8)
    _add(client, "1.2.5", 0.1)
    page = client.get("/", headers=HTML).text
    assert "<title>(2) Worklist · cxr-triage" in page
    href = 'href="https://pacs.example/viewer?StudyInstanceUIDs=1.2.3&amp;acc=A1&amp;pid=P1"'
    assert f'<a class="viewer-link" {href} target="_blank" rel="noopener noreferrer">' in page
    assert "SMITH, MARIA" in page and "SMITH^MARIA" not in page
    assert "Time to result" in page and "Time to flag" not in page
    study = client.get("/studies/1.2.3", headers=HTML).text
    assert f'<a id="viewer-link" class="viewer-link" {href} target="_blank" rel="noopener noreferrer">' in study
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        set_read(session, "1.2.3", read=True, actor="dr-a")
    assert "<title>(1) Worklist" in client.get("/", headers=HTML).text
    assert "<title>Worklist" in client.get("/?flag=not_flagged", headers=HTML).text  # this list has none


def test_the_study_page_knows_its_neighbours_in_the_list_and_after_a_mark_read(client: TestClient) -> None:
    for index in range(4):
        _add(client, f"7.{index}", 0.1, patient_name=f"P{index}^X")  # unflagged: arrival order
    page = client.get("/studies/7.1?back=sort%3Dpriority&pos=1", headers=HTML).text
    assert 'id="prev-link" rel="prev" href="/studies/7.0?pos=0"' in page  # the default list: no back needed
    assert 'id="next-link" rel="next" href="/studies/7.2?pos=2"' in page
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    done = client.post("/studies/7.1/read", data={"action": "read", "csrf": csrf, "back": "", "pos": "1"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/studies/7.1?pos=1"
    after = client.get(done.headers["location"], headers=HTML).text  # 7.1 moved down: 7.2 took its place
    assert 'id="next-link" rel="next" href="/studies/7.2?pos=1"' in after
    assert 'id="prev-link" rel="prev" href="/studies/7.0?pos=0"' in after
    last = client.get("/studies/7.1?pos=3", headers=HTML).text  # now the last of the list
    assert 'id="next-link"' not in last and 'href="/studies/7.3?pos=2"' in last
    filtered = client.get("/studies/7.2?back=read%3Dunread%26per_page%3D25&pos=1", headers=HTML).text
    assert 'href="/studies/7.3?back=read%3Dunread%26per_page%3D25&amp;pos=2"' in filtered
    assert "/studies/7.1?" not in filtered.split('id="study-region"')[0]  # read: not in an unread-only list
    assert 'id="prev-link"' in client.get("/studies/7.3", headers=HTML).text  # no place given: looked up
    _add(client, "8.0", 0.9)  # a new flag goes to the top: 7.2 moves from place 1 to 2 while it is read
    shifted = client.get("/studies/7.2?pos=1", headers=HTML).text
    assert 'id="prev-link" rel="prev" href="/studies/7.0?pos=1"' in shifted
    assert 'id="next-link" rel="next" href="/studies/7.3?pos=3"' in shifted


def test_waiting_and_age_sex_read_as_people_say_them() -> None:
    assert [waiting(s) for s in (None, 0, 59, 60, 719, 3600, 7500, 86_400 + 3 * 3600)] == \
        ["", "<1 min", "<1 min", "1 min", "11 min", "1 h 00 min", "2 h 05 min", "1 d 3 h"]
    assert age_sex(45, "F") == "45 F" and age_sex(None, "M") == "M" and age_sex(0, None) == "0"
    assert age_sex(None, None) == "—"
    assert age_sex_words(1, "O") == "1 year, other" and age_sex_words(None, None) == "age unknown, sex unknown"

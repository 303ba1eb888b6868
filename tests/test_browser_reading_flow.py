"""The worklist a radiologist keeps open all day beside the PACS viewer (issue 11), in a real headless Chromium:
the unread-flag count in the tab title, the "N new flagged" bar and the desktop notification when a flag arrives,
the keyboard (j/k, Enter, v, r, ?), the whole row as a link, the viewer links, the study page's previous/next in
the list the reader came from, the full-size image, the dark theme, forced-colours mode, the density at 1600×1000
and the key columns at 1024 px, and axe-core on the list and study pages in both themes.

The web app runs in this process (uvicorn on a free port) over a SQLite database filled through the same commit
and finish calls the listener and the worker make (tests/db_records.py); a flag "arrives" by committing and
finishing a new study while the page is open. No sleeps: every wait is Playwright's, on a condition, with a
timeout. axe-core is fetched at test time with `npm pack axe-core` (skipped, saying so, without npm or network).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from db import ingest, model_registry
from db.models import InstanceStatus
from db.worklist import WorklistFilter, set_read, study_detail, worklist_total
from worklist.presentation import viewer_url

from db_records import MODEL, receive
from peers import free_port, wait_for_port

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is in the dev extras")
expect = playwright_api.expect

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "test-output" / "browser"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000
VIEWER = "https://pacs.example/viewer?StudyInstanceUIDs={study_uid}&accession={accession}&pid={patient_id}"
KEY_COLUMNS = ("c-flag", "c-prio", "c-patient", "c-age", "c-wait", "c-score", "c-status")
STUDIES = 40
ADULTS_ONLY = {"populations": ["adult"], "age_years": {"adult": [18, None]}}


# --- the site: the web app over a seeded database --------------------------------------------------------------


def _png(path: Path, size: tuple[int, int], shade: int) -> str:
    gradient = Image.linear_gradient("L").resize(size).point(lambda v: (v + shade) % 256)
    gradient.save(path)
    return str(path)


@dataclass
class Site:
    base_url: str
    sessions: sessionmaker[Session]
    folder: Path
    pictures: dict[str, str] = field(default_factory=dict)
    made: int = 0

    def finish(self, item: ingest.WorkItem, score: float | None, status: InstanceStatus = InstanceStatus.DONE,
               reason: str | None = None, preview: str | None = None, display: str | None = None) -> None:
        """As the worker ends an instance (with its preview and full-size pictures, if any)."""
        with self.sessions.begin() as session:
            work = ingest.claim(session, item.instance_id, item.receive_count)
        assert work is not None
        model = MODEL if score is not None else {}
        outcome = ingest.Outcome(status, reason, score=score, preview_path=preview, display_path=display,
                                 **model)  # type: ignore[arg-type]
        with self.sessions.begin() as session:
            assert ingest.finish(session, work, outcome)

    def add(self, name: str, score: float | None = 0.2, **fields: Any) -> str:
        """One study of one frontal image, received and finished now; its UID."""
        self.made += 1
        uid = f"2.25.{self.made}"
        values = dict(patient_name=name, patient_id=f"PID{self.made:03d}", accession_number=f"ACC {self.made}/#",
                      patient_age_years=[4, 45, 70, None][self.made % 4],
                      patient_sex=["F", "M", "F", None][self.made % 4],
                      priority=["ROUTINE", "STAT", "HIGH", None, "LOW"][self.made % 5],
                      modality=["CR", "DX"][self.made % 2], study_description="XR CHEST PA AND LATERAL VIEWS",
                      institution="General Hospital")
        values.update(fields)
        item = receive(self.sessions, f"{uid}.1", uid, **values)
        if score is not None:
            self.finish(item, score)
        return uid

    def flag_new(self, name: str) -> str:
        return self.add(name, score=0.93, priority="ROUTINE")

    def unread_flagged(self) -> int:
        with self.sessions() as session:
            return worklist_total(session, WorklistFilter(flagged=True, read=False))

    def read_by(self, uid: str) -> str | None:
        with self.sessions() as session:
            detail = study_detail(session, uid)
        assert detail is not None
        return detail.read_by

    def viewer(self, uid: str) -> str:
        with self.sessions() as session:
            detail = study_detail(session, uid)
        assert detail is not None
        url = viewer_url(VIEWER, uid, detail.accession_number, detail.patient_id)
        assert url is not None
        return url


def _seed(site: Site) -> None:
    with site.sessions.begin() as session:
        model_registry.register_model(session, sha256=MODEL["model_sha256"], version="m1", trained=True,  # type: ignore[arg-type]
                               threshold=0.5, metadata={"validated_population": ADULTS_ONLY})
    scores = [0.1, 0.47, 0.2, 0.8, 0.3, 0.05, 0.6, 0.15, 0.25, 0.35]
    for index in range(STUDIES - 3):
        site.add(f"PATIENT{index:02d}^GIVEN^^DR", score=scores[index % len(scores)])
    lateral = receive(site.sessions, "2.25.900.1", "2.25.900", patient_name="LATERAL^ONLY", patient_id="PIDLAT",
                      accession_number="ACCLAT", patient_sex="M", patient_age_years=50)
    site.finish(lateral, None, InstanceStatus.NOT_ANALYSED, "LATERAL_VIEW")
    failed = receive(site.sessions, "2.25.901.1", "2.25.901", patient_name="FAILED^ONLY", patient_id="PIDFAIL",
                     accession_number="ACCFAIL", patient_sex="F", patient_age_years=61)
    site.finish(failed, None, InstanceStatus.FAILED, "NO_PIXEL_DATA")
    # A study of two images: the frontal one scored (flagged), the lateral one shown but not scored.
    frontal = receive(site.sessions, "2.25.902.1", "2.25.902", patient_name="TWO^IMAGES", patient_id="PIDTWO",
                      accession_number="ACCTWO", patient_sex="F", patient_age_years=33, priority="STAT")
    side = receive(site.sessions, "2.25.902.2", "2.25.902", patient_name="TWO^IMAGES", patient_id="PIDTWO",
                   accession_number="ACCTWO", view_position="LL")
    site.pictures["frontal"] = _png(site.folder / "frontal.png", (448, 512), 0)
    site.pictures["lateral"] = _png(site.folder / "lateral.png", (512, 480), 90)
    site.pictures["lateral-full"] = _png(site.folder / "lateral.full.png", (1536, 1440), 90)  # the original's size
    site.finish(frontal, 0.91, preview=site.pictures["frontal"])
    site.finish(side, None, InstanceStatus.NOT_ANALYSED, "LATERAL_VIEW", preview=site.pictures["lateral"],
                display=site.pictures["lateral-full"])


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    import uvicorn

    from worklist.app import create_app

    app = create_app(f"sqlite:///{tmp_path / 'worklist.sqlite3'}", poll_interval_s=0.25, viewer_url_template=VIEWER)
    state = Site("", app.state.sessions, tmp_path)
    _seed(state)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port("127.0.0.1", port, 30)
        state.base_url = f"http://127.0.0.1:{port}"
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.engine.dispose()


@pytest.fixture(scope="module", autouse=True)
def patient_expectations() -> Iterator[None]:
    """Playwright's expect waits 5 s by default; a loaded 2-core CI machine needs longer for a poll and a render."""
    expect.set_options(timeout=TIMEOUT_MS)
    yield
    expect.set_options(timeout=5_000)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: .ci/run installs Debian's chromium")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(chromium: Any, site: Site) -> Iterator[Callable[..., Any]]:
    """A fresh browser context (its own storage) on the site; script errors on any page fail the test. Requests
    for the viewer's host are answered here, so that a viewer tab opens without the network."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make(width: int = 1440, height: int = 900, color_scheme: str = "light", permissions: list[str] | None = None,
             init_script: str | None = None) -> Any:
        context = chromium.new_context(viewport={"width": width, "height": height}, base_url=site.base_url,
                                       color_scheme=color_scheme)
        contexts.append(context)
        context.route("https://pacs.example/**", lambda route: route.fulfill(body="the PACS viewer",
                                                                           content_type="text/plain"))
        if permissions:
            context.grant_permissions(permissions, origin=site.base_url)
        if init_script:
            context.add_init_script(init_script)
        context.on("page", lambda page: page.on("pageerror", lambda error: errors.append(str(error))))
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        return page

    try:
        yield make
    finally:
        for context in contexts:
            context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _row(page: Any, uid: str) -> Any:
    return page.locator(f'#worklist-region tr[data-study-uid="{uid}"]')


def _listed(page: Any) -> list[str]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('#worklist-region tbody tr[data-study-uid]'))
                                  .map(row => row.dataset.studyUid)""")


def _selected(page: Any) -> list[str]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('#worklist-region tr.selected'))
                                  .map(row => row.dataset.studyUid)""")


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))


# --- alerts ---------------------------------------------------------------------------------------------------


def test_a_flag_arriving_while_scrolled_counts_in_the_title_and_raises_the_new_flag_bar(
        site: Site, open_page: Callable[..., Any]) -> None:
    page = open_page(1600, 1000)
    page.goto("/")
    count = site.unread_flagged()
    assert count >= 5
    expect(page).to_have_title(re.compile(rf"^\({count}\) Worklist · cxr-triage"))
    bar = page.locator("#new-flags")
    expect(bar).to_be_hidden()

    # At the top of the list a new flag is in plain sight: the title counts it, and no bar is needed.
    first = site.flag_new("NEWFLAG^ONE")
    expect(page).to_have_title(re.compile(rf"^\({count + 1}\) Worklist"))
    expect(_row(page, first)).to_be_in_viewport()
    expect(bar).to_be_hidden()
    expect(page.locator("#live-status")).to_contain_text("1 new flagged study.")

    # Scrolled down to the end of the list, the reader stays where they are and the bar offers the new flag.
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_function("() => window.scrollY > 200")
    scrolled = page.evaluate("window.scrollY")
    second = site.flag_new("NEWFLAG^TWO")
    expect(page).to_have_title(re.compile(rf"^\({count + 2}\) Worklist"))
    expect(bar).to_be_visible()
    expect(bar).to_have_text("▲ 1 new flagged study — show")
    expect(_row(page, second)).not_to_be_in_viewport()
    assert abs(page.evaluate("window.scrollY") - scrolled) <= 40  # the place is kept (the bottom may move)
    _shot(page, "worklist-new-flag-bar.png")

    third = site.flag_new("NEWFLAG^THREE")
    expect(bar).to_have_text("▲ 2 new flagged studies — show")
    expect(page).to_have_title(re.compile(rf"^\({count + 3}\) Worklist"))
    bar.get_by_role("button").click()
    expect(bar).to_be_hidden()
    expect(_row(page, third)).to_be_in_viewport()  # the newest flag leads the list: the first new one
    assert _selected(page) == [third]
    assert page.evaluate("document.activeElement.closest('tr').dataset.studyUid") == third

    # Reading one (marking it read elsewhere) takes it off the count.
    with site.sessions.begin() as session:
        set_read(session, second, read=True, actor="dr-b")
    expect(page).to_have_title(re.compile(rf"^\({count + 2}\) Worklist"))


SPY = """
(() => {
  window.__asked = 0; window.__notes = []; window.__alerts = [];
  const Real = window.Notification;
  class Spy extends Real {
    constructor(title, options) { window.__notes.push({ title, options }); super(title, options); }
  }
  Object.defineProperty(Spy, "permission", { get: () => Real.permission });
  Spy.requestPermission = (...args) => { window.__asked += 1; return Real.requestPermission(...args); };
  window.Notification = Spy;
  document.addEventListener("cxr-triage:new-flags", event => window.__alerts.push(event.detail));
})();
"""


def test_alerts_are_asked_for_only_on_enable_alerts_and_a_new_flag_notifies_and_beeps(
        site: Site, open_page: Callable[..., Any]) -> None:
    page = open_page(permissions=["notifications"], init_script=SPY)
    page.goto("/")
    enable = page.get_by_role("button", name="Enable alerts")
    expect(enable).to_be_visible()
    sound = page.get_by_label("Sound")
    expect(sound).not_to_be_checked()  # off until the reader wants it
    assert page.evaluate("window.__asked") == 0  # never asked on load
    enable.click()
    expect(page.get_by_role("button", name="Disable alerts")).to_be_visible()
    assert page.evaluate("window.__asked") == 1
    assert page.evaluate("Notification.permission") == "granted"
    assert page.evaluate("localStorage.getItem('cxr-triage.alerts')") == "on"
    sound.check()
    assert page.evaluate("localStorage.getItem('cxr-triage.sound')") == "on"
    page.keyboard.press("j")  # a tick box takes no letters: the keys still work with the focus on it
    assert _selected(page) == _listed(page)[:1]

    site.flag_new("SECRETNAME^PATIENT")
    page.wait_for_function("() => window.__notes.length === 1")
    note = page.evaluate("window.__notes[0]")
    assert note["title"] == "cxr-triage: 1 new flagged study"
    assert "SECRETNAME" not in json.dumps(note) and "PID" not in json.dumps(note)  # no patient data on the desktop
    page.wait_for_function("() => window.__alerts.length === 1")
    assert page.evaluate("window.__alerts") == [{"count": 1, "notified": True, "sound": True}]

    # Both choices outlive a reload, and the permission is not asked for again.
    page.reload()
    expect(page.get_by_role("button", name="Disable alerts")).to_be_visible()
    expect(page.get_by_label("Sound")).to_be_checked()
    assert page.evaluate("window.__asked") == 0
    page.get_by_role("button", name="Disable alerts").click()
    expect(page.get_by_role("button", name="Enable alerts")).to_be_visible()
    site.flag_new("QUIET^PATIENT")
    page.wait_for_function("() => window.__alerts.length === 1")
    assert page.evaluate("window.__notes.length") == 0  # alerts off: no notification (the beep is its own choice)
    assert page.evaluate("window.__alerts[0]") == {"count": 1, "notified": False, "sound": True}


# The tab's visibility, as the page sees it, set by the test (a headless page is never hidden by itself).
HIDDEN = """
(() => {
  window.__hidden = false;
  Object.defineProperty(Document.prototype, "hidden", { configurable: true, get: () => window.__hidden });
  Object.defineProperty(Document.prototype, "visibilityState", {
    configurable: true, get: () => (window.__hidden ? "hidden" : "visible") });
})();
"""


def _set_hidden(page: Any, hidden: bool) -> None:
    page.evaluate("hidden => { window.__hidden = hidden; document.dispatchEvent(new Event('visibilitychange')); }",
                  hidden)


def test_a_flag_arriving_while_a_study_is_open_counts_in_the_title_and_alerts_there_too(
        site: Site, open_page: Callable[..., Any]) -> None:
    """The reader is on a study page (most of the day): a flag raised elsewhere still updates the tab title, shows
    the bar back to the worklist and fires the reader's alerts, with no patient data in the notification, also
    while the tab is hidden (alerts on). The page polls one URL a tick, its study's version, which carries the
    worklist's count: never /api/worklist/version, and never the page itself while the study is unchanged."""
    page = open_page(permissions=["notifications"], init_script=SPY + HIDDEN)
    requests: list[tuple[str, str]] = []  # (resource type, path) of every request the page makes, in order
    page.on("request", lambda request: requests.append((request.resource_type, urlsplit(request.url).path)))
    opened = site.add("OPEN^STUDY", score=0.2)
    study_path, version_path = f"/studies/{opened}", f"/api/studies/{opened}/version"
    page.goto(study_path)
    expect(page.locator("#live-status")).to_have_attribute("data-version-url", version_path)
    count = site.unread_flagged()
    expect(page).to_have_title(re.compile(rf"^\({count}\) Study "))
    bar = page.locator("#new-flags")
    expect(bar).to_be_hidden()
    page.get_by_role("button", name="Enable alerts").click()
    expect(page.get_by_role("button", name="Disable alerts")).to_be_visible()

    site.flag_new("ELSEWHERE^PATIENT")
    expect(page).to_have_title(re.compile(rf"^\({count + 1}\) Study "))
    expect(bar).to_be_visible()
    expect(bar).to_have_text("▲ 1 new flagged study — back to the worklist")
    page.wait_for_function("() => window.__notes.length === 1")
    note = page.evaluate("window.__notes[0]")
    assert note["title"] == "cxr-triage: 1 new flagged study" and "ELSEWHERE" not in json.dumps(note)
    site.flag_new("ELSEWHERE^AGAIN")
    expect(bar).to_have_text("▲ 2 new flagged studies — back to the worklist")
    expect(page).to_have_title(re.compile(rf"^\({count + 2}\) Study "))
    page.wait_for_function("() => window.__notes.length === 2")

    # The tab is hidden: with alerts on, the poll goes on and a new flag still raises its notification.
    _set_hidden(page, True)
    hidden_from = len(requests)
    site.flag_new("ELSEWHERE^HIDDEN")
    page.wait_for_function("() => window.__notes.length === 3")
    expect(page).to_have_title(re.compile(rf"^\({count + 3}\) Study "))
    assert page.evaluate("window.__notes[2].title") == "cxr-triage: 1 new flagged study"
    while_hidden = [path for kind, path in requests[hidden_from:] if kind in ("fetch", "xhr")]
    assert while_hidden and set(while_hidden) == {version_path}, while_hidden  # the study unchanged: no page fetch

    # The study itself changes while the tab is hidden (read at another workstation): a fetched study is an audited
    # view, so the page is fetched only when the reader looks again.
    with site.sessions.begin() as session:
        assert set_read(session, opened, read=True, actor="elsewhere") is not None
    for _ in range(2):  # polls that begin after the change, so see the new version
        with page.expect_request(lambda request: urlsplit(request.url).path == version_path):
            pass
    assert [path for _, path in requests].count(study_path) == 1
    with page.expect_request(lambda request: urlsplit(request.url).path == study_path):
        _set_hidden(page, False)

    # All along, one URL polled: the study's version, never the worklist's; the page fetched at its load and once
    # the reader looked again.
    polled = [path for kind, path in requests if kind in ("fetch", "xhr") and path != study_path]
    assert polled.count(version_path) >= 3 and set(polled) == {version_path}, sorted(set(polled))
    assert [path for _, path in requests].count(study_path) == 2
    with page.expect_request(lambda request: urlsplit(request.url).path == "/api/worklist/version"):
        bar.get_by_role("link").click()  # the worklist page polls its own version (which the record would show)
    expect(page).to_have_title(re.compile(rf"^\({count + 3}\) Worklist"))


# --- keyboard, rows and the viewer --------------------------------------------------------------------------------


def test_keys_select_rows_open_the_viewer_toggle_read_and_enter_opens_the_selected_study(
        site: Site, open_page: Callable[..., Any]) -> None:
    page = open_page()
    page.goto("/")
    uids = _listed(page)
    assert len(uids) == STUDIES and _selected(page) == []
    for key in "jjjk":
        page.keyboard.press(key)
    assert _selected(page) == [uids[1]]
    assert page.evaluate("document.activeElement.closest('tr').dataset.studyUid") == uids[1]
    expect(_row(page, uids[1])).to_have_css("outline-style", "solid")  # the selection is visible

    # Keys typed into a field are the field's.
    search = page.locator("#f-q")
    search.click()
    page.keyboard.type("jjkv?")
    expect(search).to_have_value("jjkv?")
    assert _selected(page) == [uids[1]] and not page.locator("dialog[open]").count()
    search.fill("")
    page.locator("h1").click()  # the focus leaves the field; the selection stays

    with page.context.expect_page() as popup:
        page.keyboard.press("v")
    viewer = popup.value
    viewer.wait_for_load_state()
    assert viewer.url == site.viewer(uids[1])
    assert "accession=ACC%20" in viewer.url and "%2F%23" in viewer.url  # the values are URL-encoded
    viewer.close()

    page.keyboard.press("?")
    help_dialog = page.locator("#keys-help")
    expect(help_dialog).to_be_visible()
    expect(help_dialog).to_contain_text("open the study in the image viewer")
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()

    # r marks the selected study read: it moves down its group, and the selection stays in place, on the next one.
    page.keyboard.press("r")
    expect(_row(page, uids[1])).to_have_class(re.compile(r"\bread\b"))
    page.wait_for_function("uid => document.querySelector('#worklist-region tr.selected')?.dataset.studyUid === uid",
                           arg=uids[2])
    assert site.read_by(uids[1]) == "loopback-demo"
    assert _listed(page).index(uids[1]) > 1

    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"/studies/{re.escape(uids[2])}\?"))
    expect(page.locator("h1")).to_have_text(re.compile(r"^PATIENT\d\d, DR GIVEN PID\d+$"))  # as people write it


def test_the_whole_row_opens_the_study_and_the_links_inside_it_keep_working(
        site: Site, open_page: Callable[..., Any]) -> None:
    page = open_page()
    page.goto("/?modality=DX")
    uids = _listed(page)
    assert uids and all(_row(page, uid).locator("td.c-mod").text_content() == "DX" for uid in uids)
    row = _row(page, uids[2])
    link = row.locator("a.viewer-link")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
    with page.context.expect_page() as popup:
        link.click()
    assert popup.value.url == site.viewer(uids[2])
    assert page.url.endswith("/?modality=DX")  # the list stayed
    row.locator("td.c-age").click()
    page.wait_for_url(re.compile(rf"/studies/{re.escape(uids[2])}\?back=modality%3DDX&pos=2$"))
    expect(page.locator("#viewer-link")).to_have_attribute("href", site.viewer(uids[2]))


# --- the study page -------------------------------------------------------------------------------------------


def test_the_study_page_walks_the_list_it_came_from_even_after_marking_read(
        site: Site, open_page: Callable[..., Any]) -> None:
    page = open_page()
    page.goto("/?sex=F")
    uids = _listed(page)
    assert len(uids) >= 5
    _row(page, uids[0]).locator("a.study-link").click()
    page.wait_for_url(re.compile(rf"/studies/{re.escape(uids[0])}\?"))
    expect(page.locator("#prev-link")).to_have_count(0)  # the first of the list
    page.locator("#next-link").click()
    page.wait_for_url(re.compile(rf"/studies/{re.escape(uids[1])}\?"))
    page.keyboard.press("j")
    page.wait_for_url(re.compile(rf"/studies/{re.escape(uids[2])}\?"))
    page.keyboard.press("k")
    page.wait_for_url(re.compile(rf"/studies/{re.escape(uids[1])}\?"))

    with page.expect_navigation():
        page.keyboard.press("r")  # the page's own Mark as read button (the form posts, and the page comes back)
    expect(page.locator("#read-status")).to_contain_text("Marked read by loopback-demo")
    page.keyboard.press("j")  # the study moved down the list; the next one is the one that took its place
    page.wait_for_url(re.compile(rf"/studies/{re.escape(uids[2])}\?"))
    page.keyboard.press("b")
    page.wait_for_url(re.compile(r"/\?sex=F$"))
    assert _listed(page)[:2] == [uids[0], uids[2]]


def test_every_image_has_a_preview_laterals_say_not_scored_and_a_click_shows_full_size(
        site: Site, open_page: Callable[..., Any]) -> None:
    page = open_page(1280, 900)
    page.goto("/studies/2.25.902")
    figures = page.locator("figure.image")
    expect(figures).to_have_count(2)
    expect(figures.nth(0).locator(".not-scored-label")).to_have_count(0)
    expect(figures.nth(1).locator(".not-scored-label")).to_have_text("⊘ not scored: lateral view")
    expect(figures.nth(1).locator("img.preview")).to_have_attribute("alt", re.compile("not scored by the model"))
    for index in range(2):
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=figures.nth(index).locator("img.preview").element_handle())

    figures.nth(1).locator("img.preview").click()
    zoom = page.locator("#zoom")
    expect(zoom).to_be_visible()
    big = page.locator("#zoom-img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=big.element_handle())
    # The display image at its full resolution, one image pixel per screen pixel (the dialog scrolls).
    assert big.evaluate("img => [img.naturalWidth, img.naturalHeight, img.width, img.height]") == [1536, 1440, 1536,
                                                                                                  1440]
    _shot(page, "study-zoom.png")
    page.keyboard.press("Escape")
    expect(zoom).to_be_hidden()
    figures.nth(0).locator("img.preview").click()  # an older image with no full-size copy: the preview, as it is
    page.wait_for_function("img => img.complete && img.naturalWidth === 448", arg=big.element_handle())
    page.keyboard.press("Escape")
    expect(page.locator(".summary dl.facts")).to_contain_text("Time to result")
    expect(page.locator(".summary dl.facts")).not_to_contain_text("Time to flag")


# --- themes and layout ------------------------------------------------------------------------------------------


def _luminance(css_colour: str) -> float:
    red, green, blue = (int(part) / 255 for part in re.findall(r"\d+", css_colour)[:3])
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (red, green, blue)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _body_colours(page: Any) -> tuple[float, float]:
    background, text = page.evaluate("""() => { const style = getComputedStyle(document.body);
                                                return [style.backgroundColor, style.color]; }""")
    return _luminance(background), _luminance(text)


def test_the_dark_theme_follows_the_system_and_the_readers_choice_is_remembered(
        site: Site, open_page: Callable[..., Any]) -> None:
    dark = open_page(color_scheme="dark")
    dark.goto("/")
    background, text = _body_colours(dark)
    assert background < 0.02 and text > 0.7
    dark.select_option("#theme-select", "light")
    assert _body_colours(dark)[0] > 0.95
    dark.reload()
    assert _body_colours(dark)[0] > 0.95  # remembered (localStorage), applied before the page is drawn
    expect(dark.locator("#theme-select")).to_have_value("light")
    dark.select_option("#theme-select", "")
    assert _body_colours(dark)[0] < 0.02  # back to the system's

    light = open_page(color_scheme="light")
    light.goto("/studies/2.25.902")
    assert _body_colours(light)[0] > 0.95
    light.select_option("#theme-select", "dark")
    assert _body_colours(light)[0] < 0.02


def test_in_forced_colours_mode_marks_keep_their_borders_and_the_selection_shows(
        site: Site, chromium: Any) -> None:
    """Windows high contrast replaces every colour: what told flag, STAT and borderline apart must survive as
    borders and words, and the selected row as an outline of its own style."""
    context = chromium.new_context(base_url=site.base_url, forced_colors="active", viewport={"width": 1440,
                                                                                           "height": 900})
    try:
        page = context.new_page()
        page.goto("/")
        assert page.evaluate("() => matchMedia('(forced-colors: active)').matches")
        widths = page.evaluate("""() => ['.badge.flag', '.prio.stat', '.prio.high', '.mark.borderline', '.mark.oop']
            .map(selector => getComputedStyle(document.querySelector(selector)).borderTopWidth)""")
        assert widths == ["2px", "2px", "1px", "1px", "1px"], widths
        expect(page.locator(".badge.flag").first).to_have_text("▲ FLAGGED")
        page.keyboard.press("j")
        expect(page.locator("#worklist-region tr.selected")).to_have_css("outline-style", "dashed")
    finally:
        context.close()


def test_at_1024_px_the_key_columns_fit_without_horizontal_scrolling(site: Site, open_page: Callable[..., Any]
                                                                    ) -> None:
    page = open_page(1024, 768)
    page.goto("/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1024
    first = _row(page, _listed(page)[0])
    for column in KEY_COLUMNS:
        for cell in (page.locator(f"thead th.{column}"), first.locator(f"td.{column}")):
            box = cell.bounding_box()
            assert box is not None, column
            assert box["x"] >= 0 and box["x"] + box["width"] <= 1024, (column, box)
    _shot(page, "worklist-1024.png")


def test_at_1600_by_1000_at_least_twenty_rows_show_one_line_each(site: Site, open_page: Callable[..., Any]) -> None:
    page = open_page(1600, 1000)
    page.goto("/")
    heights = page.evaluate("""() => Array.from(document.querySelectorAll('#worklist-region tbody tr[data-study-uid]'))
        .map(row => { const box = row.getBoundingClientRect(); return [box.bottom, box.height]; })""")
    line = page.evaluate("parseFloat(getComputedStyle(document.querySelector('#worklist-region td')).lineHeight)")
    visible = [bottom for bottom, _ in heights if bottom <= 1000]
    assert len(visible) >= 20, heights
    assert all(height < 2 * line for _, height in heights), (line, heights)  # one line per study
    assert page.evaluate("document.documentElement.scrollWidth") <= 1600
    # The model is named once (the list has one version); a long status is cut, with the whole text as its title.
    expect(page.locator("caption .model-note")).to_have_text("Model m1.")
    expect(page.locator("thead th.c-model")).to_have_count(0)
    status = page.locator('tr[data-study-uid="2.25.900"] td.c-status .trunc')
    expect(status).to_have_attribute("title", "not analysed: LATERAL_VIEW (lateral view)")
    _shot(page, "worklist-1600.png")


# --- axe-core ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def axe_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: axe-core is fetched at test time with `npm pack axe-core`")
    folder = tmp_path_factory.mktemp("axe")
    try:
        packed = subprocess.run([npm, "pack", "axe-core@4", "--pack-destination", str(folder)], capture_output=True,
                                text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("`npm pack axe-core` took over 3 minutes (no registry reachable?)")
    archives = sorted(folder.glob("axe-core-*.tgz"))
    if packed.returncode != 0 or not archives:
        pytest.skip(f"`npm pack axe-core` failed (no registry reachable?): {packed.stderr.strip()[-400:]}")
    with tarfile.open(archives[0]) as archive:
        member = archive.extractfile("package/axe.min.js")
        assert member is not None
        return member.read().decode("utf-8")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_serious_or_critical_violation_on_the_list_and_study_pages(
        site: Site, open_page: Callable[..., Any], axe_source: str, scheme: str) -> None:
    page = open_page(1440, 900, color_scheme=scheme)
    found: dict[str, list[dict[str, Any]]] = {}
    for path in ("/", "/?sex=F", "/studies/2.25.902", "/studies/2.25.900"):
        page.goto(path)
        if path == "/":
            page.keyboard.press("j")  # with a selected row
        page.evaluate(axe_source)  # evaluated by the driver, so the page's Content-Security-Policy allows it
        result = page.evaluate("() => axe.run(document, { resultTypes: ['violations'] })")
        found[path] = [{"id": v["id"], "impact": v["impact"], "nodes": len(v["nodes"]),
                        "example": v["nodes"][0]["html"][:160] if v["nodes"] else ""} for v in result["violations"]]
    print(f"axe-core ({scheme}):", json.dumps(found, indent=1))
    bad = {path: [v for v in violations if v["impact"] in ("serious", "critical")]
           for path, violations in found.items()}
    assert not any(bad.values()), bad

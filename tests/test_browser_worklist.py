"""End to end in a real headless Chromium (Debian's, driven by Playwright): studies C-STOREd to the running
system appear on the open worklist without a reload and in triage order, the reader keeps their place, the
study page shows the previews and toggles the heat map, marking read moves the row, the not-analysed reason is
shown, and an open study page follows changes. Screenshots go to test-output/browser/.

How the flags are made honestly: the system runs unchanged (listener, worker, web as real processes) with a test
checkpoint whose scores are mid-range (see ``mid_range_checkpoint``). Before the stack starts, the two chest images
are scored by the worker's own ``Pipeline.analyse``; the site threshold (``TRIAGE_THRESHOLD``) is set halfway
between, so the worker flags exactly one of them. The one that will not be flagged is sent first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_worklist_heatmap import mid_range_checkpoint

from dicom_io.sender import send_files
from dicom_io.synthetic import chest_dataset
from worklist.presentation import person_name

from conftest import TEST_CALLING_AETS
from stack import Backend, Stack

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is in the dev extras")

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "test-output" / "browser"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESULT_TIMEOUT_MS = 180_000  # a result on the shared 2-core CI machine, model load included
UI_TIMEOUT_MS = 30_000


@dataclass
class Scenario:
    """The three studies of this module and the stack they go to."""

    stack: Stack
    files: dict[str, Path]
    uids: dict[str, str]
    scores: dict[str, float]
    sent: set[str] = field(default_factory=set)

    def send(self, name: str) -> None:
        results = send_files([self.files[name]], host="127.0.0.1", port=self.stack.dicom_port,
                             called_aet=self.stack.ae_title, calling_aet="CXR_SENDER")
        assert results[0].ok, results
        self.sent.add(name)

    def send_all_and_wait(self) -> None:
        """For tests that run alone (-k): whatever the first test did not send yet."""
        for name in ("unflagged", "flagged", "lateral"):
            if name not in self.sent:
                self.send(name)
        for uid in self.uids.values():
            self.stack.wait_for_study(uid, timeout=RESULT_TIMEOUT_MS / 1000)


def _write(ds, path: Path) -> Path:  # type: ignore[no-untyped-def]
    ds.save_as(path, enforce_file_format=True)
    return path


def _pipeline_scores(files: list[Path], checkpoint: Path, workdir: Path) -> list[float]:
    """Score files exactly as the worker will: its own Pipeline, on a scratch database."""
    from worker.config import WorkerConfig

    from pipelines import worker_pipeline

    config = WorkerConfig(database_url=f"sqlite:///{workdir / 'scratch.sqlite3'}", broker_url="filesystem://",
                          spool_dir=workdir / "spool", rejected_dir=workdir / "rejected", queue_dir=workdir / "queue",
                          model_path=checkpoint, model_cache_dir=workdir / "models", device="cpu")
    pipeline = worker_pipeline(config)
    scores = []
    for path in files:
        outcome = pipeline.analyse(path)
        assert outcome.score is not None, outcome
        scores.append(outcome.score)
    return scores


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: .ci/run installs Debian's chromium")
    work = tmp_path_factory.mktemp("browser")
    checkpoint = mid_range_checkpoint(work / "mid-range.safetensors")
    candidates = [_write(chest_dataset(patient_index=81, seed=1), work / "a.dcm"),
                  _write(chest_dataset(patient_index=82, opacity=True, seed=2), work / "b.dcm")]
    scores = _pipeline_scores(candidates, checkpoint, work)
    low, high = sorted(zip(scores, candidates, strict=True))
    assert high[0] - low[0] > 1e-4, f"the two test images score too alike to split ({scores})"
    threshold = (low[0] + high[0]) / 2
    lateral = _write(chest_dataset(patient_index=83, view="LL", seed=3), work / "lateral.dcm")
    files = {"unflagged": low[1], "flagged": high[1], "lateral": lateral}
    from pydicom import dcmread

    uids = {name: str(dcmread(path, stop_before_pixels=True).StudyInstanceUID) for name, path in files.items()}
    (work / "stack").mkdir()
    with Stack(work / "stack", Backend("embedded", "", ""), checkpoint, allowed_calling_aets=TEST_CALLING_AETS,
               threshold=repr(threshold)) as stack:
        yield Scenario(stack, files, uids, {"unflagged": low[0], "flagged": high[0]})


@pytest.fixture(scope="module")
def browser(scenario: Scenario) -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, scenario: Scenario) -> Iterator[object]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1440, "height": 900},
                                  base_url=f"http://127.0.0.1:{scenario.stack.web_port}")
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _shot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _wait_for_order(page, uids: list[str], timeout: float = RESULT_TIMEOUT_MS) -> None:  # type: ignore[no-untyped-def]
    """Until the page lists exactly these studies, in this order (read from the live DOM)."""
    page.wait_for_function(
        """expected => JSON.stringify(Array.from(document.querySelectorAll(
             '#worklist-region tbody tr[data-study-uid]')).map(r => r.dataset.studyUid))
             === JSON.stringify(expected)""",
        arg=uids, timeout=timeout)


def _row(page, uid: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#worklist-region tr[data-study-uid="{uid}"]')


def test_studies_appear_live_in_triage_order_and_the_reader_keeps_their_place(page, scenario: Scenario
                                                                              ) -> None:  # type: ignore[no-untyped-def]
    expect = playwright_api.expect
    u, f, lat = scenario.uids["unflagged"], scenario.uids["flagged"], scenario.uids["lateral"]
    page.goto("/")
    expect(page.locator(".notice")).to_contain_text("Triage support only — not a diagnosis.")
    page.evaluate("window.__notReloaded = true")

    scenario.send("unflagged")
    _wait_for_order(page, [u])
    expect(_row(page, u).locator("td.c-status")).to_have_text("done", timeout=RESULT_TIMEOUT_MS)
    expect(_row(page, u).locator(".badge")).to_have_text("not flagged")
    # The first score came from an untrained model: the banner appears with it, without a reload.
    expect(page.locator(".untrained")).to_have_text("UNTRAINED MODEL — scores are meaningless")
    # The reader is on the older study (keyboard focus on its link) when a flagged one arrives above it.
    _row(page, u).locator("a.study-link").focus()

    scenario.send("flagged")
    _wait_for_order(page, [f, u])  # received later, flagged: above
    expect(_row(page, f).locator(".badge.flag")).to_have_text("▲ FLAGGED")
    expect(_row(page, f)).to_have_class(re.compile(r"\bflagged\b"))
    assert page.evaluate("document.activeElement.dataset.focusKey") == f"study:{u}"  # place kept
    assert page.evaluate("window.__notReloaded === true")  # no reload: the same document

    scenario.send("lateral")
    _wait_for_order(page, [f, u, lat])  # unflagged ones in arrival order
    expect(_row(page, lat).locator("td.c-status")).to_contain_text("not analysed: LATERAL_VIEW",
                                                                   timeout=RESULT_TIMEOUT_MS)
    expect(_row(page, lat).locator("td.c-status")).to_contain_text("(lateral view)")
    expect(page.locator("#live-status")).to_contain_text("List updated")
    assert page.evaluate("window.__notReloaded === true")
    expect(_row(page, f).locator("td.c-status")).to_have_text("done", timeout=RESULT_TIMEOUT_MS)
    _shot(page, "worklist.png")


def test_study_page_shows_previews_and_toggles_the_heat_map(page, scenario: Scenario) -> None:  # type: ignore[no-untyped-def]
    expect = playwright_api.expect
    scenario.send_all_and_wait()
    f = scenario.uids["flagged"]
    page.goto("/")
    _row(page, f).locator("a.study-link").click()
    page.wait_for_url(f"**/studies/{f}**")
    expect(page.locator("h1")).to_contain_text(person_name(str(header(scenario, "flagged").PatientName)))
    expect(page.locator(".decision .badge")).to_have_text("▲ FLAGGED")
    expect(page.locator(".decision")).to_contain_text("Triage support, not a diagnosis.")
    image = page.locator("img.preview").first
    expect(image).to_have_attribute("src", f"/api/studies/{f}/images/{page_sop(scenario, 'flagged')}/preview.png")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    preview_size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert max(preview_size) == 512

    toggle = page.get_by_role("button", name="Show heat map")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(page.get_by_role("button", name="Hide heat map")).to_have_attribute("aria-pressed", "true")
    expect(image).to_have_attribute("src", f"/api/studies/{f}/images/{page_sop(scenario, 'flagged')}/heatmap.png")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0 && img.src.endsWith('heatmap.png')",
                           arg=image.element_handle())
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == preview_size
    expect(image).to_have_attribute("alt", "Image 1 (PA) with the model's heat map over it")
    threshold = page.locator("dl.facts div", has_text="Threshold").first.locator("dd")
    expect(threshold).to_have_text(f"{scenario_threshold(scenario):.3f}")
    _shot(page, "study-heatmap.png")
    page.get_by_role("button", name="Hide heat map").click()
    expect(image).to_have_attribute("src", f"/api/studies/{f}/images/{page_sop(scenario, 'flagged')}/preview.png")

    rows = scenario.stack.sql("SELECT actor, action FROM audit_events WHERE study_instance_uid = :uid", uid=f)
    assert ("loopback-demo", "view") in rows and ("loopback-demo", "image") in rows

    # A lateral view is not scored, but its picture is shown, marked so (and without a heat map).
    page.goto(f"/studies/{scenario.uids['lateral']}")
    expect(page.locator(".not-scored-label")).to_have_text("⊘ not scored: lateral view")
    lateral = page.locator("img.preview")
    expect(lateral).to_have_attribute("alt", "Image 1 (LL): not scored by the model")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=lateral.element_handle())
    expect(page.locator("button.heatmap-toggle")).to_have_count(0)


def test_marking_read_moves_the_row_to_the_bottom_of_its_group(page, scenario: Scenario) -> None:  # type: ignore[no-untyped-def]
    expect = playwright_api.expect
    scenario.send_all_and_wait()
    u, f, lat = scenario.uids["unflagged"], scenario.uids["flagged"], scenario.uids["lateral"]
    page.goto("/")
    _wait_for_order(page, [f, u, lat], timeout=UI_TIMEOUT_MS)
    _row(page, u).locator("a.study-link").click()
    page.get_by_role("button", name="Mark as read").click()
    expect(page.locator("#read-status")).to_contain_text("Marked read by loopback-demo")
    page.get_by_role("link", name="← Back to the worklist").click()
    _wait_for_order(page, [f, lat, u], timeout=UI_TIMEOUT_MS)  # at the bottom of the unflagged group, still there
    expect(_row(page, u)).to_contain_text("read by loopback-demo")
    _shot(page, "worklist-after-read.png")

    # Another reader marks it unread (through the API): the open page follows without a reload.
    page.evaluate("window.__notReloaded = true")
    assert scenario.stack.http.delete(f"/api/studies/{u}/read").json()["read"] is False
    _wait_for_order(page, [f, u, lat], timeout=UI_TIMEOUT_MS)
    assert page.evaluate("window.__notReloaded === true")
    rows = scenario.stack.sql("SELECT action FROM audit_events WHERE study_instance_uid = :uid", uid=u)
    assert {("mark_read",), ("mark_unread",), ("view",)} <= set(rows)


def header(scenario: Scenario, name: str):  # type: ignore[no-untyped-def]
    from pydicom import dcmread

    return dcmread(scenario.files[name], stop_before_pixels=True)


def page_sop(scenario: Scenario, name: str) -> str:
    return str(header(scenario, name).SOPInstanceUID)


def scenario_threshold(scenario: Scenario) -> float:
    return (scenario.scores["unflagged"] + scenario.scores["flagged"]) / 2


def test_an_open_study_page_follows_changes_without_a_reload(page, scenario: Scenario) -> None:  # type: ignore[no-untyped-def]
    expect = playwright_api.expect
    scenario.send_all_and_wait()
    u = scenario.uids["unflagged"]
    page.goto(f"/studies/{u}")
    expect(page.locator("#read-status")).to_contain_text("Unread.")
    page.evaluate("window.__notReloaded = true")

    # Another reader marks it read through the API: the open page shows it, then shows it unread again.
    assert scenario.stack.http.put(f"/api/studies/{u}/read").json()["read"] is True
    expect(page.locator("#read-status")).to_contain_text("Marked read by", timeout=UI_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Mark as unread")).to_be_visible()
    expect(page.locator("#live-status")).to_contain_text("Study updated at", timeout=UI_TIMEOUT_MS)
    assert scenario.stack.http.delete(f"/api/studies/{u}/read").json()["read"] is False
    expect(page.locator("#read-status")).to_contain_text("Unread.", timeout=UI_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Mark as read")).to_be_visible()
    assert page.evaluate("window.__notReloaded === true")
    expect(page.locator(".decision .badge")).to_have_text("not flagged")  # the region came back whole

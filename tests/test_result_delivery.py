"""Results back to the PACS: report versions after a quiet period, the delivery outbox against a real Orthanc that is
down and comes back, dead letters, and what the API and /metrics show of it."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import reports
from db.models import Delivery, DeliveryStatus, InstanceStatus, Study
from dicom_io.synthetic import chest_dataset
from worker.config import DicomDestination, ReportingConfig
from worker.reporting import Reporter

import peers
from db_records import process, receive

pytestmark = pytest.mark.timeout(240)

STUDY = "1.2.826.0.1.3680043.8.498.4242"


def _later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def _image(sessions: sessionmaker[Session], folder: Path, *, study: str = STUDY, view: str = "PA",
           score: float | None = 0.8, reason: str | None = None, index: int = 0) -> str:
    """A received and processed chest image whose header is in ``folder`` (the spool, as far as the reporter
    knows); returns its SOP Instance UID."""
    ds = chest_dataset(patient_index=7, study_uid=study, view=view, with_pixels=False, seed=index)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    item = receive(sessions, ds.SOPInstanceUID, study, series_instance_uid=ds.SeriesInstanceUID,
                   view_position=view, spool_path=str(path), patient_name="SYNTHETIC^PATIENT7",
                   patient_id="SYN0007", accession_number="ACC7")
    status = InstanceStatus.DONE if score is not None else InstanceStatus.NOT_ANALYSED
    assert process(sessions, item, score, status=status, reason=reason)
    return str(ds.SOPInstanceUID)


def _config(tmp_path: Path, **overrides: object) -> ReportingConfig:
    base = ReportingConfig(reports_dir=tmp_path / "reports", quiet_s=30, retry_base_s=5, max_attempts=3,
                           send_timeout_s=5, software_version="test")
    return replace(base, **overrides)  # type: ignore[arg-type]


def _evidence(sr: object) -> set[str]:
    """The SOP Instance UIDs an SR names as the images it was made from."""
    return {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence  # type: ignore[attr-defined]
            for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}


def _orthanc_sr_uids(orthanc: peers.Orthanc) -> list[str]:
    found = orthanc.client.post("/tools/find", json={"Level": "Instance", "Query": {"Modality": "SR"},
                                                     "Expand": True}).json()
    return sorted(item["MainDicomTags"]["SOPInstanceUID"] for item in found)


def test_a_study_is_reported_once_quiet_and_again_when_its_result_changes(sessions: sessionmaker[Session],
                                                                          tmp_path: Path) -> None:
    first = _image(sessions, tmp_path, score=0.8)
    second = _image(sessions, tmp_path, view="LL", score=None, reason="LATERAL_VIEW", index=1)
    reporter = Reporter(_config(tmp_path), sessions)

    assert reporter.make_reports(now=_later(10)) == 0  # inside the quiet period: nothing yet
    assert reporter.make_reports(now=_later(31)) == 1  # both images, one report
    assert reporter.make_reports(now=_later(60)) == 0  # same result: no second version
    with sessions() as session:
        (v1,) = reports.study_reports(session, STUDY)
    sr = dcmread(reporter.store.path_for(v1["sr_sop_instance_uid"]))
    assert sr.StudyInstanceUID == STUDY and sr.InstanceNumber == 1
    assert _evidence(sr) == {first, second}

    third = _image(sessions, tmp_path, score=0.95, index=2)  # a later image raises the study's score
    assert reporter.make_reports(now=_later(31)) == 1
    with sessions() as session:
        v2, v1_again = reports.study_reports(session, STUDY)
    assert (v2["version"], v1_again["version"]) == (2, 1) and v2["score"] == pytest.approx(0.95)
    assert v2["sr_series_instance_uid"] == v1["sr_series_instance_uid"]  # the same series, a newer instance
    sr2 = dcmread(reporter.store.path_for(v2["sr_sop_instance_uid"]))
    predecessors = [ref.ReferencedSOPInstanceUID for study in sr2.PredecessorDocumentsSequence
                    for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence]
    assert predecessors == [v1["sr_sop_instance_uid"]] and _evidence(sr2) == {first, second, third}


def test_delivery_waits_for_a_pacs_that_is_down_and_lands_exactly_once(sessions: sessionmaker[Session],
                                                                      tmp_path: Path) -> None:
    peers.require_orthanc()
    _image(sessions, tmp_path, score=0.8)
    orthanc = peers.Orthanc(tmp_path / "orthanc", {}, aet="PACS")  # ports chosen; not started yet: the PACS is down
    destination = DicomDestination("PACS", "127.0.0.1", orthanc.dicom_port)
    reporter = Reporter(_config(tmp_path, dicom_destinations=(destination,)), sessions)
    assert reporter.make_reports(now=_later(31)) == 1

    assert reporter.deliver_due() == 0
    with sessions() as session:
        (report,) = reports.study_reports(session, STUDY)
    (delivery,) = report["deliveries"]
    assert delivery["status"] == "PENDING" and delivery["attempts"] == 1 and delivery["last_error"]
    assert delivery["next_attempt_at"] > datetime.now(UTC)  # backed off, not hammering
    assert reporter.deliver_due() == 0  # not due yet: nothing is tried

    with orthanc:
        assert reporter.deliver_due(now=_later(60)) == 1
        assert reporter.deliver_due(now=_later(3600)) == 0  # delivered: never sent again
        assert _orthanc_sr_uids(orthanc) == [report["sr_sop_instance_uid"]]
        tags = orthanc.client.post("/tools/find", json={"Level": "Instance", "Query": {"Modality": "SR"},
                                                        "Expand": True}).json()[0]
        study = orthanc.client.get(f"/instances/{tags['ID']}/study").json()
        assert study["MainDicomTags"]["StudyInstanceUID"] == STUDY  # in the original study
    with sessions() as session:
        (delivery,) = reports.study_reports(session, STUDY)[0]["deliveries"]
    assert delivery["status"] == "DELIVERED" and delivery["attempts"] == 2 and delivery["last_error"] is None


def test_a_destination_that_never_answers_ends_dead_lettered_and_visible(sessions: sessionmaker[Session],
                                                                         tmp_path: Path) -> None:
    _image(sessions, tmp_path, score=0.2)
    closed = DicomDestination("PACS", "127.0.0.1", peers.free_port())
    reporter = Reporter(_config(tmp_path, dicom_destinations=(closed,), max_attempts=2), sessions)
    reporter.make_reports(now=_later(31))
    reporter.deliver_due()
    reporter.deliver_due(now=_later(3600))
    assert reporter.deliver_due(now=_later(7200)) == 0
    with sessions() as session:
        (delivery,) = session.scalars(select(Delivery)).all()
        assert delivery.status == DeliveryStatus.DEAD and delivery.attempts == 2
        assert reports.delivery_counts(session) == {("dicom", "DEAD"): 1}


def test_a_newer_version_supersedes_an_undelivered_older_one(sessions: sessionmaker[Session],
                                                             tmp_path: Path) -> None:
    _image(sessions, tmp_path, score=0.4)
    closed = DicomDestination("PACS", "127.0.0.1", peers.free_port())
    reporter = Reporter(_config(tmp_path, dicom_destinations=(closed,)), sessions)
    reporter.make_reports(now=_later(31))
    reporter.deliver_due()  # fails: pending
    _image(sessions, tmp_path, score=0.9, index=1)
    reporter.make_reports(now=_later(31))
    with sessions() as session:
        v2, v1 = reports.study_reports(session, STUDY)
        assert [d["status"] for d in v1["deliveries"]] == ["SUPERSEDED"]
        assert [d["status"] for d in v2["deliveries"]] == ["PENDING"]
        assert session.scalar(select(Study.report_due)) is False


def test_two_reporters_never_claim_the_same_delivery(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    _image(sessions, tmp_path, score=0.9)
    destination = DicomDestination("PACS", "127.0.0.1", peers.free_port())
    Reporter(_config(tmp_path, dicom_destinations=(destination,)), sessions).make_reports(now=_later(31))
    lease = timedelta(seconds=60)
    with sessions.begin() as session:
        first = reports.claim_due(session, now=datetime.now(UTC), lease=lease)
    with sessions.begin() as session:
        second = reports.claim_due(session, now=datetime.now(UTC), lease=lease)
    with sessions.begin() as session:
        after_lease = reports.claim_due(session, now=_later(120), lease=lease)  # the first claimer died
    assert len(first) == 1 and second == [] and len(after_lease) == 1
    assert after_lease[0].attempts == 2


def test_the_ris_gets_an_oru_keyed_by_accession_and_a_nak_is_retried(sessions: sessionmaker[Session],
                                                                     tmp_path: Path) -> None:
    import hl7

    from worker.config import HostPort

    from hl7_peer import MllpListener, ack

    _image(sessions, tmp_path, score=0.9)
    answers = iter(["AE", "AA"])  # the RIS refuses once (e.g. busy), then takes it

    def answer(message: hl7.Message) -> bytes:
        return ack(next(answers))(message)  # type: ignore[return-value]

    with MllpListener(answer) as ris:
        reporter = Reporter(_config(tmp_path, hl7_destination=HostPort("127.0.0.1", ris.port)), sessions)
        reporter.make_reports(now=_later(31))
        assert reporter.deliver_due() == 0
        assert reporter.deliver_due(now=_later(60)) == 1
        first, second = ris.received.get(timeout=10), ris.received.get(timeout=10)
    assert first == second  # a retry sends the same message (same control id, same times)
    message = hl7.parse(second)
    assert str(message.segment("OBR")[3]) == "ACC7" and str(message.segment("PID")[3]) == "SYN0007"
    assert "FLAG" in str(message) and str(message.segment("OBR")[25]) == "F"
    with sessions() as session:
        (delivery,) = reports.study_reports(session, STUDY)[0]["deliveries"]
    assert delivery["kind"] == "hl7" and delivery["status"] == "DELIVERED" and delivery["attempts"] == 2


def test_the_optional_heat_map_goes_with_the_sr_as_a_secondary_capture(sessions: sessionmaker[Session],
                                                                       tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image
    from sqlalchemy import update

    from db.models import Instance

    sop = _image(sessions, tmp_path, score=0.9)
    png = tmp_path / "heat.png"
    Image.fromarray(np.full((64, 48, 3), (200, 40, 40), dtype=np.uint8)).save(png)
    with sessions.begin() as session:
        session.execute(update(Instance).where(Instance.sop_instance_uid == sop).values(heatmap_path=str(png)))
    reporter = Reporter(_config(tmp_path, heatmap=True), sessions)
    reporter.make_reports(now=_later(31))
    with sessions() as session:
        (report,) = session.scalars(select(reports.StudyReport)).all()
        sr_path, capture_path = report.files
    capture = dcmread(capture_path)
    assert capture.StudyInstanceUID == STUDY and capture.Modality != "SR"
    assert "NOT FOR DIAGNOSIS" in capture.SeriesDescription and capture.BurnedInAnnotation == "YES"
    assert capture.pixel_array.shape == (64, 48, 3)
    assert dcmread(sr_path).Modality == "SR"


def test_the_study_page_and_the_api_show_each_version_and_its_dead_letter(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from worklist.app import create_app

    client = TestClient(create_app(f"sqlite:///{tmp_path / 'web.sqlite3'}", api_token="s3cret",
                                   model_card=tmp_path / "MODEL_CARD.md"))
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    _image(sessions, tmp_path, score=0.9)
    closed = DicomDestination("PACS", "127.0.0.1", peers.free_port())
    reporter = Reporter(_config(tmp_path, dicom_destinations=(closed,), max_attempts=1), sessions)
    reporter.make_reports(now=_later(31))
    reporter.deliver_due()
    headers = {"Authorization": "Bearer s3cret"}

    body = client.get(f"/api/studies/{STUDY}", headers=headers).json()
    (delivery,) = body["reports"][0]["deliveries"]
    assert body["reports"][0]["version"] == 1
    assert delivery["status"] == "DEAD" and delivery["destination"] == str(closed) and delivery["last_error"]
    page = client.get(f"/studies/{STUDY}", headers=headers).text
    assert "Sent to PACS / RIS" in page and "DEAD" in page and str(closed) in page
    metrics = client.get("/metrics", headers=headers).text
    assert 'cxr_triage_result_deliveries{kind="dicom",state="dead"} 1.0' in metrics


@pytest.mark.parametrize("name,value,message", [
    ("result_destinations", "PACS@pacs-host", "AET@host:port"),
    ("result_destinations", "A_TITLE_LONGER_THAN_16@h:104", "AET@host:port"),
    ("hl7_destination", "ris-host", "host:port"),
    ("result_stow_url", "pacs:8042/dicom-web", "http(s) URL"),
])
def test_a_destination_that_cannot_work_stops_start_up_with_its_name(name: str, value: str, message: str) -> None:
    from pydantic import ValidationError

    from triage.settings import Settings

    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(**{name: value})
    assert Settings(result_destinations="PACS@10.0.0.5:104, ARCHIVE@[::1]:11112").result_destinations == [
        "PACS@10.0.0.5:104", "ARCHIVE@[::1]:11112"]

"""Orthanc as the site's PACS, configured with deploy/orthanc/, routes chest radiographs to a running cxr-triage.

Each test starts a throw-away Orthanc with the shipped example configuration (ports, storage and the
"cxr-triage" address replaced) and the shipped Lua script next to it, sends to Orthanc over DICOM with
dcmtk's storescu, and reads what reached cxr-triage's database. Negative checks are ordered, not timed:
what must not be forwarded is stored in Orthanc first, and Orthanc runs OnStoredInstance in storage
order, so once a later instance has reached cxr-triage and every Orthanc job has ended, a wrong
forward would already show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicom_io.checks import CHEST_WORDS
from dicom_io.sop_classes import RADIOGRAPH_SOP_CLASSES
from dicom_io.synthetic import chest_dataset
from triage.settings import Settings

import peers
from stack import ROOT, Stack, wait_until

ROUTING_DIR = ROOT / "deploy" / "orthanc"
ROUTING_LUA = ROUTING_DIR / "cxr-triage-routing.lua"
EXAMPLE_CONFIG = ROUTING_DIR / "orthanc.json"
MODALITY = "cxr-triage"
# Options the test owns (free ports, throw-away storage, the stack's listener); the rest is used as shipped.
HARNESS_KEYS = {"StorageDirectory", "IndexDirectory", "DicomAet", "DicomPort", "HttpPort", "DicomModalities",
                "RemoteAccessAllowed"}

# Routing is Orthanc's doing, the same whichever backend cxr-triage runs on: the embedded one suffices.
embedded_only = pytest.mark.parametrize("stack", ["embedded"], indirect=True)

_JSON_COMMENT = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*|/\*.*?\*/', re.S)  # a string is kept, a comment dropped
_FORWARDING = re.compile(r"Lua says: cxr-triage routing: forwarding instance (\S+)$", re.M)
_FINAL_JOB_STATES = ("Success", "Failure")


def example_config() -> dict[str, Any]:
    """deploy/orthanc/orthanc.json as Orthanc reads it (JSON with // and /* */ comments)."""
    text = EXAMPLE_CONFIG.read_text()
    config: dict[str, Any] = json.loads(_JSON_COMMENT.sub(lambda m: m[1] or "", text))
    return config


@contextmanager
def routing_orthanc(workdir: Path, stack: Stack) -> Iterator[peers.Orthanc]:
    """An Orthanc with the example configuration and script, its "cxr-triage" being the stack's listener."""
    peers.require_orthanc()
    peers.require_dcmtk()
    workdir.mkdir(parents=True)
    shutil.copy(ROUTING_LUA, workdir)  # next to the written configuration, as the example's relative path expects
    extra = {key: value for key, value in example_config().items() if key not in HARNESS_KEYS}
    modalities = {MODALITY: (stack.ae_title, "127.0.0.1", stack.dicom_port)}
    with peers.Orthanc(workdir, modalities, aet="ORTHANC", extra_config=extra) as orthanc:
        yield orthanc


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _radiograph(patient_index: int, study_uid: str, *, sop_class: str | None = None, modality: str = "",
                **kwargs: Any) -> Dataset:
    """A small synthetic chest CR, optionally relabelled as another SOP class (pixels and tags otherwise alike)."""
    ds = chest_dataset(patient_index=patient_index, study_uid=study_uid, rows=128, columns=112, seed=patient_index,
                       **kwargs)
    if sop_class:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.Modality = modality
    return ds


def send_to_orthanc(orthanc: peers.Orthanc, files: list[Path], calling_aet: str = "STORESCU") -> None:
    """C-STORE ``files`` to Orthanc, in order, on one association."""
    result = peers.storescu(files, orthanc.dicom_port, called_aet=orthanc.aet, calling_aet=calling_aet)
    assert result.ok, result.log[-3000:]


def orthanc_id(orthanc: peers.Orthanc, sop_instance_uid: str) -> str:
    """Orthanc's id of the instance with this SOP Instance UID (what the script logs)."""
    response = orthanc.client.post("/tools/lookup", content=sop_instance_uid)
    response.raise_for_status()
    (found,) = [item["ID"] for item in response.json() if item["Type"] == "Instance"]
    return str(found)


def forwarded_ids(orthanc: peers.Orthanc) -> list[str]:
    """Orthanc instance ids the script logged as forwarded on receipt, in order (re-sends not included)."""
    return _FORWARDING.findall(orthanc.log_path.read_text(errors="replace"))


def store_jobs(orthanc: peers.Orthanc) -> list[dict[str, Any]]:
    """Orthanc's C-STORE jobs (one per forward)."""
    response = orthanc.client.get("/jobs?expand")
    response.raise_for_status()
    return [job for job in response.json() if job["Type"] == "DicomModalityStore"]


def ended_store_jobs(orthanc: peers.Orthanc, timeout: float = 60) -> list[dict[str, Any]]:
    """Wait until every C-STORE job of Orthanc has ended; return them."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = store_jobs(orthanc)
        if all(job["State"] in _FINAL_JOB_STATES for job in jobs):
            return jobs
        if time.monotonic() >= deadline:
            raise AssertionError(f"Orthanc jobs still running after {timeout} s: {jobs}")
        time.sleep(0.2)


def stored_sop_uids(stack: Stack) -> set[str]:
    """SOP Instance UIDs cxr-triage's listener has committed (it commits before answering the C-STORE)."""
    return {row[0] for row in stack.sql("SELECT sop_instance_uid FROM instances")}


@embedded_only
def test_chest_radiographs_are_routed_and_nothing_else(stack: Stack, tmp_path: Path) -> None:
    study_uid = generate_uid()
    routed = [
        _radiograph(90, study_uid),  # CR, BodyPartExamined CHEST
        _radiograph(90, study_uid, sop_class=DigitalXRayImageStorageForPresentation, modality="DX", view="AP"),
    ]
    del routed[1].BodyPartExamined  # absent, as many DX modalities leave it: forwarded, cxr-triage decides
    # cxr-triage's listener would take the first two were they forwarded (it refuses CT at negotiation,
    # so a forwarded CT would leave a failed Orthanc job instead).
    not_routed = [
        _radiograph(91, generate_uid(), body_part="HAND"),
        _radiograph(92, generate_uid(), sop_class=SecondaryCaptureImageStorage, modality="OT"),
        _radiograph(93, generate_uid(), sop_class=CTImageStorage, modality="CT"),
    ]
    files = [_save(ds, tmp_path / f"not-routed-{i}.dcm") for i, ds in enumerate(not_routed)]
    files += [_save(ds, tmp_path / f"routed-{i}.dcm") for i, ds in enumerate(routed)]
    routed_uids = {str(ds.SOPInstanceUID) for ds in routed}
    not_routed_uids = {str(ds.SOPInstanceUID) for ds in not_routed}

    with routing_orthanc(tmp_path / "orthanc", stack) as orthanc:
        send_to_orthanc(orthanc, files)  # the ones not routed first
        wait_until(lambda: routed_uids <= stored_sop_uids(stack), 60, "both chest radiographs to reach cxr-triage")
        jobs = ended_store_jobs(orthanc)
        expected_ids = sorted(orthanc_id(orthanc, uid) for uid in routed_uids)
        assert sorted(forwarded_ids(orthanc)) == expected_ids  # each once, and nothing else
        log = orthanc.log_path.read_text(errors="replace")

    assert [job["State"] for job in jobs] == ["Success", "Success"], jobs
    assert not stored_sop_uids(stack) & not_routed_uids
    study = stack.wait_for_study(study_uid)  # scored and on the worklist
    assert {i["sop_instance_uid"] for i in study["instances"]} == routed_uids
    assert study_uid in {item["study_uid"] for item in stack.worklist()}
    for ds in routed + not_routed:  # the script logs ids only
        assert str(ds.PatientName) not in log and str(ds.PatientID) not in log


@embedded_only
def test_an_instance_stored_by_cxr_triage_is_not_sent_back(stack: Stack, tmp_path: Path) -> None:
    own = _radiograph(94, generate_uid())  # routable in every other respect
    witness = _radiograph(95, generate_uid())
    with routing_orthanc(tmp_path / "orthanc", stack) as orthanc:
        send_to_orthanc(orthanc, [_save(own, tmp_path / "own.dcm")], calling_aet=stack.ae_title)
        send_to_orthanc(orthanc, [_save(witness, tmp_path / "witness.dcm")])
        stack.wait_for_study(str(witness.StudyInstanceUID), final=False)
        jobs = ended_store_jobs(orthanc)
        own_id = orthanc_id(orthanc, str(own.SOPInstanceUID))
        assert forwarded_ids(orthanc) == [orthanc_id(orthanc, str(witness.SOPInstanceUID))]
        assert f"not forwarding instance {own_id}: it came from cxr-triage" in orthanc.log_path.read_text()

    assert [job["State"] for job in jobs] == ["Success"], jobs
    assert str(own.SOPInstanceUID) not in stored_sop_uids(stack)


@embedded_only
def test_a_forward_that_failed_is_sent_again_once_cxr_triage_answers(stack: Stack, tmp_path: Path) -> None:
    during_outage = _radiograph(96, generate_uid())
    after_restart = _radiograph(97, generate_uid())
    with routing_orthanc(tmp_path / "orthanc", stack) as orthanc:
        listener = stack.processes.pop("listener")
        os.killpg(listener.pid, signal.SIGTERM)  # what an upgrade or a restart of cxr-triage does
        listener.wait(30)
        try:
            send_to_orthanc(orthanc, [_save(during_outage, tmp_path / "outage.dcm")])
            wait_until(lambda: [j for j in store_jobs(orthanc) if j["State"] == "Failure"], 60,
                       "the forward to fail while cxr-triage is down")
        finally:
            stack.start_process("listener", "listen")
            peers.wait_for_port("127.0.0.1", stack.dicom_port, 60)
        send_to_orthanc(orthanc, [_save(after_restart, tmp_path / "after.dcm")])
        stack.wait_for_study(str(after_restart.StudyInstanceUID), final=False)
        stack.wait_for_study(str(during_outage.StudyInstanceUID), 60, final=False)  # re-sent after that success
        outage_id = orthanc_id(orthanc, str(during_outage.SOPInstanceUID))
        assert f"forwarding instance {outage_id} again" in orthanc.log_path.read_text()


def test_the_example_configuration_and_script_match_cxr_triage() -> None:
    """No Orthanc needed: the shipped files name what cxr-triage itself accepts and listens as."""
    config = example_config()
    assert config["LuaScripts"] == [ROUTING_LUA.name]  # relative: Orthanc reads it from the configuration's folder
    aet, _host, port = config["DicomModalities"][MODALITY]
    assert (aet, port) == (Settings.model_fields["dicom_ae_title"].default, Settings.model_fields["dicom_port"].default)

    lua = ROUTING_LUA.read_text()
    assert f"local MODALITY = '{MODALITY}'" in lua
    assert set(re.findall(r"\['([\d.]+)'\] = true", lua)) == {str(uid) for uid in RADIOGRAPH_SOP_CLASSES}
    chest_words = re.search(r"local CHEST_WORDS = \{([^}]*)\}", lua)
    assert chest_words is not None
    assert tuple(re.findall(r"'([A-Z]+)'", chest_words[1])) == CHEST_WORDS


@pytest.mark.parametrize("backend_name", ["embedded", "fleet"])
def test_the_pacs_routes_a_study_in_and_later_holds_our_report_in_that_study(
        backend_name: str, model_path: Path, tmp_path: Path) -> None:
    """The whole loop a site runs: Orthanc routes the study to cxr-triage; after the quiet period our SR goes back
    into the same study by C-STORE (and to a second archive by STOW-RS), the RIS gets the ORU, and the SR coming
    back into Orthanc is not routed to us again."""
    import hl7

    from conftest import make_backend
    from hl7_peer import MllpListener, ack

    study_uid = generate_uid()
    frontal = _radiograph(98, study_uid)
    lateral = _radiograph(98, study_uid, view="LL")
    frontal.AccessionNumber = lateral.AccessionNumber = "ACC98"
    files = [_save(frontal, tmp_path / "pa.dcm"), _save(lateral, tmp_path / "ll.dcm")]
    dicomweb = {"Plugins": [str(peers.ORTHANC_DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    if not peers.ORTHANC_DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"Orthanc's DICOMweb plugin missing at {peers.ORTHANC_DICOMWEB_PLUGIN} "
                    "(apt-get install orthanc-dicomweb)")
    for backend in make_backend(backend_name):
        (tmp_path / "stack").mkdir()
        stack = Stack(tmp_path / "stack", backend, model_path, result_quiet_s="1", result_retry_base_s="1")
        with routing_orthanc(tmp_path / "pacs", stack) as pacs, \
                peers.Orthanc(tmp_path / "archive", {}, aet="ARCHIVE", extra_config=dicomweb) as archive, \
                MllpListener(ack("AA")) as ris:
            stack.env.update(TRIAGE_RESULT_DESTINATIONS=f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
                             TRIAGE_RESULT_STOW_URL=f"{archive.http_url}/dicom-web",
                             TRIAGE_HL7_DESTINATION=f"127.0.0.1:{ris.port}")
            with stack:
                send_to_orthanc(pacs, files)
                study = stack.wait_for_study(study_uid)

                def report_delivered() -> dict[str, Any] | None:
                    reports = (stack.study(study_uid) or {}).get("reports") or []  # noqa: B023 (called here)
                    states = [d["status"] for d in reports[0]["deliveries"]] if reports else []
                    return reports[0] if states == ["DELIVERED"] * 3 else None

                report = wait_until(report_delivered, 120, "the report to reach the PACS, the archive and the RIS")
                in_pacs = pacs.client.post("/tools/find", json={
                    "Level": "Instance", "Expand": True,
                    "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}).json()
                in_archive = archive.client.post("/tools/find", json={
                    "Level": "Instance", "Expand": True, "Query": {"StudyInstanceUID": study_uid}}).json()
                oru = hl7.parse(ris.received.get(timeout=10))
                ended_store_jobs(pacs)
                metrics = stack.http.get("/metrics").text
                instances = stack.sql("SELECT sop_instance_uid FROM instances")

    assert study["status"] == "DONE" and len(study["instances"]) == 2
    assert [i["MainDicomTags"]["SOPInstanceUID"] for i in in_pacs] == [report["sr_sop_instance_uid"]]
    assert [i["MainDicomTags"]["SOPInstanceUID"] for i in in_archive] == [report["sr_sop_instance_uid"]]
    assert str(oru.segment("OBR")[3]) == "ACC98" and str(oru.segment("OBR")[25]) == "F"
    assert report["version"] == 1 and report["flag"] == study["flag"]
    assert {row[0] for row in instances} == {str(frontal.SOPInstanceUID), str(lateral.SOPInstanceUID)}  # no loop
    assert 'cxr_triage_result_deliveries{kind="dicom",state="delivered"} 1.0' in metrics
    assert 'cxr_triage_result_deliveries{kind="hl7",state="delivered"} 1.0' in metrics

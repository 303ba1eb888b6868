"""Real DICOM peers send to the running system; studies reach the worklist (embedded and fleet backends)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_io.sender import send_files
from dicom_io.synthetic import chest_dataset

import peers
from conftest import real_dicom_files
from stack import Stack, wait_until


def _save(ds, path: Path) -> Path:  # type: ignore[no-untyped-def]
    ds.save_as(path, enforce_file_format=True)
    return path


def test_echoscu_is_answered(stack: Stack) -> None:
    peers.require_dcmtk()
    result = peers.echoscu(stack.dicom_port, calling_aet="ECHOSCU")
    assert result.returncode == 0, result.stdout
    assert "Success" in result.stdout


def test_unknown_calling_ae_is_rejected(stack: Stack) -> None:
    peers.require_dcmtk()
    result = peers.echoscu(stack.dicom_port, calling_aet="INTRUDER")
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout


def test_storescu_real_chest_files_reach_the_worklist(stack: Stack) -> None:
    peers.require_dcmtk()
    files = real_dicom_files()
    sent = peers.storescu(files, stack.dicom_port, calling_aet="STORESCU")
    assert sent.ok, sent.log[-3000:]

    headers = [dcmread(path, force=True, stop_before_pixels=True) for path in files]
    by_study: dict[str, set[str]] = {}
    for ds in headers:
        by_study.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    for study_uid, sop_uids in by_study.items():
        study = stack.wait_for_study(study_uid)
        assert study["status"] == "DONE", study
        assert {i["sop_instance_uid"] for i in study["instances"]} == sop_uids
        for instance in study["instances"]:
            assert instance["status"] == "DONE", instance
            assert 0.0 <= instance["score"] <= 1.0
            assert instance["model_version"] == "untrained-resnet50-seed0"
            assert len(instance["model_sha256"]) == 64

    listed = {item["study_uid"]: item for item in stack.worklist()}
    for study_uid in by_study:
        item = listed[study_uid]
        assert item["score"] is not None and item["model_version"] == "untrained-resnet50-seed0"
        assert item["model_trained"] is False
    # Transfer syntaxes were kept as received (JPEG 2000, JPEG-LS, JPEG baseline, implicit VR).
    syntaxes = {row[0] for row in stack.sql("SELECT DISTINCT transfer_syntax_uid FROM instances")}
    assert {"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.50"} <= syntaxes


def test_orthanc_forwards_a_study_to_the_worklist(stack: Stack, tmp_path: Path) -> None:
    peers.require_orthanc()
    study_uid = "1.2.826.0.1.3680043.10.1.7" + str(stack.dicom_port)
    frontal = _save(chest_dataset(patient_index=70, study_uid=study_uid, view="PA"), tmp_path / "pa.dcm")
    lateral = _save(chest_dataset(patient_index=70, study_uid=study_uid, view="LL", seed=3), tmp_path / "ll.dcm")
    modalities = {"triage": (stack.ae_title, "127.0.0.1", stack.dicom_port)}
    with peers.Orthanc(tmp_path / "orthanc", modalities, aet="ORTHANC") as orthanc:
        uploaded = [orthanc.upload(frontal), orthanc.upload(lateral)]
        assert uploaded[0]["ParentStudy"] == uploaded[1]["ParentStudy"]
        response = orthanc.store_to_modality("triage", [uploaded[0]["ParentStudy"]])
        assert response.status_code == 200, response.text

    study = stack.wait_for_study(study_uid)
    assert study["status"] == "DONE"
    by_view = {i["view_position"]: i for i in study["instances"]}
    assert by_view["PA"]["status"] == "DONE" and by_view["PA"]["score"] is not None
    assert by_view["LL"]["status"] == "NOT_ANALYSED" and by_view["LL"]["reason"] == "LATERAL_VIEW"
    assert study["score"] == by_view["PA"]["score"]  # the study score comes from the frontal image only


def test_ct_is_refused_at_negotiation(stack: Stack, tmp_path: Path) -> None:
    peers.require_dcmtk()
    ds = chest_dataset(patient_index=71)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.Modality = "CT"
    result = peers.storescu([_save(ds, tmp_path / "ct.dcm")], stack.dicom_port, calling_aet="STORESCU")
    assert not result.succeeded and list(result.not_sent) == [tmp_path / "ct.dcm"], result.log[-2000:]
    assert stack.study(str(ds.StudyInstanceUID)) is None


def test_unparseable_dataset_gets_a_failure_status_and_a_record(stack: Stack, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes without parsing
    good = _save(chest_dataset(patient_index=72), tmp_path / "good.dcm")
    data = bytearray(good.read_bytes())
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # preamble, DICM, group length element
    # After the meta: an element whose length runs far past the end of the data.
    broken = bytes(data[:meta_end]) + b"\x08\x00\x16\x00UI\xf0\xff" + b"\x00" * 64
    path = tmp_path / "broken.dcm"
    path.write_bytes(broken)

    ae = AE(ae_title="CXR_SENDER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", stack.dicom_port, ae_title=stack.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)  # sent as raw bytes, not parsed by the sender
    finally:
        assoc.release()
    assert 0xC000 <= status.Status <= 0xCFFF, hex(status.Status)
    rows = wait_until(lambda: stack.sql("SELECT status, calling_ae, payload_path FROM rejections"), 10,
                      "a rejection record")
    assert any(row[0] == status.Status and row[1] == "CXR_SENDER" and Path(row[2]).is_file() for row in rows)
    assert f"refused (0x{status.Status:04X})" in stack.logs("listener")


def test_header_values_past_their_limits_are_stored_or_refused_for_good(stack: Stack, tmp_path: Path) -> None:
    """Never 0xA700 ("retry") for data no retry can store: kept verbatim, or refused with 0xC212 and a record."""
    from pynetdicom import AE

    odd = chest_dataset(patient_index=76, rows=64, columns=56)
    odd.PatientID = "P" * 100
    odd.PatientName = "ODD\x00^PATIENT"
    odd.AccessionNumber = "A" * 80
    odd.Modality = "CR" * 10
    odd.ViewPosition = "PA" + " " * 2 + "X" * 14
    overlong = chest_dataset(patient_index=77, rows=64, columns=56)
    overlong.StudyInstanceUID = "1.2." + "7" * 70  # (pynetdicom refuses to send an overlong SOP Instance UID)
    ae = AE(ae_title="CXR_SENDER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", stack.dicom_port, ae_title=stack.ae_title)
    assert assoc.is_established
    try:
        stored = assoc.send_c_store(odd)
        refused = assoc.send_c_store(overlong)
    finally:
        assoc.release()
    assert stored.Status == 0x0000, hex(stored.Status)
    assert refused.Status == 0xC212, hex(refused.Status)
    study = stack.wait_for_study(str(odd.StudyInstanceUID))
    assert study["patient_id"] == "P" * 100 and study["accession_number"] == "A" * 80
    assert study["patient_name"] == "ODD^PATIENT"
    rows = wait_until(lambda: stack.sql("SELECT status, payload_path FROM rejections WHERE status = :s", s=0xC212),
                      10, "a rejection record")
    assert Path(rows[0][1]).is_file()


def test_instance_without_pixels_is_kept_and_shown_as_not_analysed(stack: Stack, tmp_path: Path) -> None:
    ds = chest_dataset(patient_index=73, with_pixels=False)
    results = send_files([_save(ds, tmp_path / "nopix.dcm")], host="127.0.0.1", port=stack.dicom_port,
                         called_aet=stack.ae_title, calling_aet="CXR_SENDER")
    assert results[0].ok
    study = stack.wait_for_study(str(ds.StudyInstanceUID))
    assert study["status"] == "NOT_ANALYSED" and study["reason"] == "NO_PIXEL_DATA"
    assert study["instances"][0]["status"] == "FAILED"
    listed = [item for item in stack.worklist(status="NOT_ANALYSED") if item["study_uid"] == ds.StudyInstanceUID]
    assert listed and listed[0]["reason"] == "NO_PIXEL_DATA"


def test_same_instance_six_times_leaves_one_row_one_result_and_its_flag(stack: Stack, tmp_path: Path) -> None:
    ds = chest_dataset(patient_index=74)
    path = _save(ds, tmp_path / "twice.dcm")
    flags = []
    for expected_receives in range(1, 7):  # past the worker's attempt limit: a resend must never demote
        results = send_files([path], host="127.0.0.1", port=stack.dicom_port, called_aet=stack.ae_title,
                             calling_aet="CXR_SENDER")
        assert results[0].ok

        def processed() -> bool:
            study = stack.study(str(ds.StudyInstanceUID))
            return bool(study and study["status"] == "DONE"
                        and study["instances"][0]["receive_count"] == expected_receives)  # noqa: B023 (called in the loop)

        wait_until(processed, 120, f"receive {expected_receives} to be processed")
        flags.append(stack.study(str(ds.StudyInstanceUID))["flag"])
    assert len(set(flags)) == 1, flags
    instances = stack.sql("SELECT id FROM instances WHERE sop_instance_uid = :uid", uid=str(ds.SOPInstanceUID))
    assert len(instances) == 1
    health = stack.http.get("/healthz").json()
    assert health["workers_alive"] == 1 and health["worker_last_seen_s"] < 15, health  # the worker's heartbeat
    results = stack.sql("SELECT score FROM results WHERE instance_id = :id", id=instances[0][0])
    assert len(results) == 1


def test_cli_worklist_json_matches_the_api(stack: Stack, tmp_path: Path) -> None:
    ds = chest_dataset(patient_index=75)
    send_files([_save(ds, tmp_path / "cli.dcm")], host="127.0.0.1", port=stack.dicom_port,
               called_aet=stack.ae_title, calling_aet="CXR_SENDER")
    stack.wait_for_study(str(ds.StudyInstanceUID))
    result = stack.cli("worklist", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert [item["study_uid"] for item in printed] == [item["study_uid"] for item in stack.worklist()]
    for key in ("study_uid", "status", "flag", "score", "reason", "model_version", "received_at", "flagged_at"):
        assert all(key in item for item in printed), key
    table = stack.cli("worklist")
    assert "UNTRAINED MODEL" in table.stdout
    assert "SYNTHETIC^PATIENT75" not in stack.logs("listener") + stack.logs("worker")


def test_import_backfills_through_the_same_commit_point(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "backfill"
    folder.mkdir()
    ds = chest_dataset(patient_index=76)
    _save(ds, folder / "a.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    result = stack.cli("import", str(folder))
    assert result.returncode == 1, result.stdout + result.stderr  # one of two files was not DICOM
    assert "committed 1 of 2 file(s)" in result.stdout
    study = stack.wait_for_study(str(ds.StudyInstanceUID))
    assert study["status"] == "DONE" and study["instances"][0]["score"] is not None


def test_page_lists_studies_with_reasons_and_the_untrained_banner(stack: Stack, tmp_path: Path) -> None:
    ds = chest_dataset(patient_index=77, view="LL")
    send_files([_save(ds, tmp_path / "lateral.dcm")], host="127.0.0.1", port=stack.dicom_port,
               called_aet=stack.ae_title, calling_aet="CXR_SENDER")
    stack.wait_for_study(str(ds.StudyInstanceUID))
    page = stack.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "UNTRAINED MODEL — scores are meaningless" in page.text
    assert "Triage support only" in page.text
    row = page.text.split(f'data-study-uid="{ds.StudyInstanceUID}"', 1)[1].split("</tr>", 1)[0]
    assert "not analysed: LATERAL_VIEW" in row and "SYNTHETIC, PATIENT77" in row  # the name as people write it


def test_every_encoding_is_accepted_and_stored_as_received(stack: Stack, tmp_path: Path) -> None:
    """RLE, deflate, big endian, JPEG lossless, JPEG-LS, JPEG 2000…: accepted, kept byte for byte, classified."""
    from pydicom.uid import generate_uid

    from dicom_io.synthetic import chest_pixels

    from pixel_samples import LOSSLESS, LOSSY, dataset_from_pixels, encode

    peers.require_dcmtk()
    study_uid = generate_uid()
    files = []
    for syntax in LOSSLESS + LOSSY:
        folder = tmp_path / syntax
        folder.mkdir()
        source = dataset_from_pixels(chest_pixels(256, 224))
        source.StudyInstanceUID = study_uid
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        received = encode(source, syntax, folder)
        files.append(folder / f"{syntax}.dcm")
        assert received.file_meta.TransferSyntaxUID == syntax
    sent = peers.storescu(files, stack.dicom_port, calling_aet="STORESCU")
    assert sent.ok, sent.log[-3000:]
    study = stack.wait_for_study(study_uid)
    assert len(study["instances"]) == len(files)
    assert all(i["status"] == "DONE" for i in study["instances"]), study["instances"]
    stored = {row[0]: row[1] for row in stack.sql(
        "SELECT i.transfer_syntax_uid, i.spool_path FROM instances i JOIN studies s ON s.id = i.study_id "
        "WHERE s.study_instance_uid = :uid", uid=study_uid)}  # this test's images, not the module's others
    for path in files:
        syntax = path.stem
        original = dcmread(path)
        kept = dcmread(stored[syntax])
        assert kept.file_meta.TransferSyntaxUID == syntax
        assert kept.PixelData == original.PixelData, syntax  # no transcoding on receive


def test_logs_carry_no_patient_data_after_hostile_and_corrupted_input(stack: Stack, tmp_path: Path) -> None:
    """Names, IDs, birth dates and accession numbers go into files that break in every way the product knows,
    and into searches; then every log of every process is searched for them."""
    from pydicom.uid import generate_uid
    from pynetdicom import AE, _config

    secrets = {"name": "ZEBRA^QUOKKA", "id": "PIDXQ7781", "birth": "19230517", "accession": "ACCXQ99"}
    study_uid = generate_uid()  # one study: waiting for it waits for every image the worker gets

    def marked(index: int, **changes: object):  # type: ignore[no-untyped-def]
        ds = chest_dataset(patient_index=80 + index, rows=64, columns=56, seed=index, study_uid=study_uid)
        ds.PatientName, ds.PatientID = secrets["name"], secrets["id"]
        ds.PatientBirthDate, ds.AccessionNumber = secrets["birth"], secrets["accession"]
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        return ds

    plain = _save(marked(1), tmp_path / "plain.dcm")
    blank = _save(marked(2, WindowCenter="1e400"), tmp_path / "blank.dcm")
    lateral = _save(marked(3, ViewPosition="LL"), tmp_path / "lateral.dcm")
    nopix = _save(marked(4), tmp_path / "nopix.dcm")
    without = dcmread(nopix)
    del without.PixelData
    without.save_as(nopix, enforce_file_format=True)
    # A UI element whose value is the patient's name: a validator quoting it would leak it.
    bad_ui = tmp_path / "bad-ui.dcm"
    source = _save(marked(5), tmp_path / "source.dcm")  # its own SOP Instance UID: not a resend of another
    raw = source.read_bytes()
    series = str(dcmread(source).SeriesInstanceUID).encode()
    bad_ui.write_bytes(raw.replace(series, (b"ZEBRA^QUOKKA" + series)[:len(series)]))
    # Bytes that stop parsing right after the patient module.
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[:raw.index(secrets["accession"].encode()) + 40])

    results = send_files([plain, blank, lateral, nopix], host="127.0.0.1", port=stack.dicom_port,
                         called_aet=stack.ae_title, calling_aet="CXR_SENDER")
    assert all(result.ok for result in results)
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the damaged files' bytes as they are
    try:
        ae = AE(ae_title="CXR_SENDER")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", stack.dicom_port, ae_title=stack.ae_title)
        assert assoc.is_established
        try:
            for path in (bad_ui, cut):
                assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    for params in ({"q": "ZEBRA"}, {"q": secrets["id"]}, {"q": secrets["accession"]}):
        stack.http.get("/api/worklist", params=params)
        stack.http.get("/", params=params, headers={"Accept": "text/html"})
    wait_until(lambda: stack.study(study_uid) and stack.study(study_uid)["status"] != "PENDING"
               and len(stack.study(study_uid)["instances"]) == 5  # plain, blank, lateral, no pixels, bad UI
               and all(i["status"] not in ("RECEIVED", "QUEUED", "PROCESSING")
                       for i in stack.study(study_uid)["instances"]), 180, "every instance to be finished")
    for name in ("listener", "worker", "web"):
        text = stack.logs(name)
        assert text, name
        for kind, secret in secrets.items():
            assert secret not in text and secret.replace("^", " ") not in text, (name, kind)
        assert "ZEBRA" not in text and "QUOKKA" not in text, name

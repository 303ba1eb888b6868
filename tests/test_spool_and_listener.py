"""The commit point's building blocks: atomic spool writes, and listener statuses when commit fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_io.listener import (
    STATUS_OUT_OF_RESOURCES,
    Listener,
    ListenerConfig,
    OutOfResources,
    ReceivedInstance,
    RefusedAssociation,
    RejectedInstance,
)
from dicom_io.sender import send_files
from dicom_io.spool import Spool
from dicom_io.synthetic import chest_dataset

from peers import free_port
from stack import wait_until


def _encoded(**attributes: object) -> bytes:
    """A small synthetic chest instance, ``attributes`` set on it, as the bytes a C-STORE delivers."""
    from io import BytesIO

    ds = chest_dataset(rows=16, columns=16)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _received(data: bytes) -> ReceivedInstance:
    from dicom_io.listener import parse_received

    return ReceivedInstance(data, parse_received(data), "SENDER", "127.0.0.1:1")


def _store_one(config: ListenerConfig, receiver: object, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a listener, C-STORE one chest file to it, stop it; the SendResult."""
    listener = Listener(config, receiver)  # type: ignore[arg-type]
    listener.start()
    try:
        path = tmp_path / "cr.dcm"
        chest_dataset().save_as(path, enforce_file_format=True)
        [result] = send_files([path], host="127.0.0.1", port=listener.port, called_aet="CXR_TRIAGE")
    finally:
        listener.stop()
    return result


def test_spool_write_replaces_atomically(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.write("1.2.3", b"first")
    second = spool.write("1.2.3", b"second")
    assert first == second and second.read_bytes() == b"second"
    assert spool.path_for("1.2.3") != spool.path_for("1.2.4")
    assert [p.name for p in second.parent.iterdir()] == [second.name]  # no temp files left behind


def test_failed_spool_write_leaves_the_previous_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    spool.write("1.2.3", b"kept")

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        spool.write("1.2.3", b"lost")
    assert spool.path_for("1.2.3").read_bytes() == b"kept"
    assert len(list(spool.path_for("1.2.3").parent.iterdir())) == 1


class FullReceiver:
    """A receiver whose storage is full: the listener must answer 0xA700 so the sender keeps its copy."""

    def __init__(self) -> None:
        self.attempts: list[ReceivedInstance] = []
        self.refused: list[RefusedAssociation] = []

    def commit(self, instance: ReceivedInstance) -> None:
        self.attempts.append(instance)
        raise OutOfResources("disk full")

    def reject(self, rejected: RejectedInstance) -> None:
        raise AssertionError("a valid instance must not be rejected")

    def refuse_association(self, refused: RefusedAssociation) -> None:
        self.refused.append(refused)


def test_listener_answers_out_of_resources_when_commit_fails(tmp_path: Path) -> None:
    receiver = FullReceiver()
    result = _store_one(ListenerConfig("CXR_TRIAGE", "127.0.0.1", free_port(), []), receiver, tmp_path)
    assert result.status == STATUS_OUT_OF_RESOURCES
    assert len(receiver.attempts) == 1
    assert receiver.attempts[0].data[128:132] == b"DICM"  # the encoded file exactly as a spool would take it


def test_header_drops_nul_characters_and_refuses_overlong_uids() -> None:
    from dicom_io.header import InvalidIdentifier
    from dicom_io.listener import parse_received

    assert parse_received(_encoded(PatientName="DOE\x00^JANE\x00")).patient_name == "DOE^JANE"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        with pytest.raises(InvalidIdentifier, match=keyword):
            parse_received(_encoded(**{keyword: "1.2." + "3" * 70}))


def test_a_slow_drip_sender_is_cut_off_and_the_association_limit_holds() -> None:
    import socket
    import time

    from pynetdicom import AE

    receiver = FullReceiver()
    listener = Listener(ListenerConfig("CXR_TRIAGE", "127.0.0.1", free_port(), [], max_associations=2,
                                       data_stall_timeout_s=2.0, acse_timeout_s=2.0), receiver)
    listener.start()
    try:
        # An A-ASSOCIATE-RQ announcing 200 bytes, then one byte every half second: never a complete PDU.
        drip = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
        drip.sendall(b"\x01\x00" + (200).to_bytes(4, "big"))
        started, closed = time.monotonic(), False
        while time.monotonic() - started < 10:
            try:
                drip.sendall(b"\x00")
                drip.settimeout(0.5)
                if drip.recv(64) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - started
        drip.close()
        assert closed and 1.5 < elapsed < 6, elapsed  # cut off after the 2 s stall limit, not held

        deadline = time.monotonic() + 10
        while listener.ae.active_associations and time.monotonic() < deadline:  # the cut-off one winds down
            time.sleep(0.05)
        assert not listener.ae.active_associations
        ae = AE(ae_title="SENDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        held = [ae.associate("127.0.0.1", listener.port, ae_title="CXR_TRIAGE") for _ in range(2)]
        assert all(assoc.is_established for assoc in held)
        third = ae.associate("127.0.0.1", listener.port, ae_title="CXR_TRIAGE")
        assert not third.is_established and third.is_rejected  # the configured limit, not pynetdicom's 10
        for assoc in held:
            assoc.release()
        # Our side of a released association winds down on its own thread: wait for the slots to free.
        wait_until(lambda: not listener.ae.active_associations, 10, "released associations wound down")
        misdirected = ae.associate("127.0.0.1", listener.port, ae_title="OTHER_PACS")
        assert misdirected.is_rejected  # the called AE title must be ours
        # Each refusal reaches the receiver with its reason (EVT_REJECTED fires just after the RJ is sent).
        wait_until(lambda: len(receiver.refused) >= 2, 10, "two refusals recorded")
        assert [(r.reason, r.calling_ae, r.called_ae) for r in receiver.refused] == [
            ("association-limit", "SENDER", "CXR_TRIAGE"), ("called-ae-wrong", "SENDER", "OTHER_PACS")]
        assert all(r.peer.startswith("127.0.0.1:") for r in receiver.refused)
    finally:
        listener.stop()


class SlowReceiver:
    """Commits after a pause longer than the stall limit: the peer waits for us, which is not a stall."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s
        self.committed: list[ReceivedInstance] = []

    def commit(self, instance: ReceivedInstance) -> None:
        import time

        time.sleep(self.pause_s)
        self.committed.append(instance)

    def reject(self, rejected: RejectedInstance) -> None:
        raise AssertionError("nothing should be rejected")

    def refuse_association(self, refused: RefusedAssociation) -> None:
        raise AssertionError("no association should be refused")


def test_a_slow_commit_is_not_taken_for_a_stalled_sender(tmp_path: Path) -> None:
    receiver = SlowReceiver(pause_s=2.5)
    result = _store_one(ListenerConfig("CXR_TRIAGE", "127.0.0.1", free_port(), [], data_stall_timeout_s=1.0),
                        receiver, tmp_path)
    assert result.ok and len(receiver.committed) == 1


def test_a_refused_new_instance_leaves_no_spool_file_and_a_known_one_keeps_its_copy(tmp_path: Path) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from worker.ingest import Ingestor

    broken = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'x.sqlite3'}"))
    spool = Spool(tmp_path / "spool")
    ingestor = Ingestor(spool, broken, tmp_path / "rejected", publish=lambda item: None)
    instance = _received(_encoded())
    with pytest.raises(OutOfResources):
        ingestor.commit(instance)
    assert not spool.path_for(instance.header.sop_instance_uid).exists()  # 0xA700 leaves nothing behind
    spool.write(instance.header.sop_instance_uid, b"an earlier, committed copy")
    with pytest.raises(OutOfResources):
        ingestor.commit(instance)
    assert spool.path_for(instance.header.sop_instance_uid).exists()  # a row refers to it: kept


def test_above_the_disk_watermark_c_stores_are_refused_before_the_disk_is_full(tmp_path: Path) -> None:
    from sqlalchemy import select

    from db.engine import open_database
    from db.models import Instance, Rejection
    from dicom_io.spool import disk_used_percent
    from worker.ingest import Ingestor

    used = disk_used_percent(tmp_path)
    assert 0 < used < 100
    spool = Spool(tmp_path / "spool")
    _, sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    ingestor = Ingestor(spool, sessions, tmp_path / "rejected", publish=lambda item: None,
                        disk_watermark_percent=max(used - 1, 0.01))
    instance = _received(_encoded())
    with pytest.raises(OutOfResources, match="watermark"):
        ingestor.commit(instance)
    assert not spool.path_for(instance.header.sop_instance_uid).exists()
    with sessions() as session:
        assert session.scalars(select(Instance)).all() == []  # nothing committed ...
        (refusal,) = session.scalars(select(Rejection)).all()  # ... but the refusal is on record
    assert refusal.status == 0xA700 and "watermark" in refusal.reason and refusal.payload_path is None


def test_health_and_metrics_report_the_spool_disk_against_its_watermark(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from worklist.app import create_app

    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    full = TestClient(create_app(url, spool_disk_used=lambda: 95.0, disk_watermark_percent=90.0),
                      base_url="http://127.0.0.1")
    health = full.get("/healthz")
    assert health.status_code == 503 and "watermark" in health.json()["detail"]
    text = full.get("/metrics").text
    assert "cxr_triage_spool_disk_used_ratio 0.95" in text and "cxr_triage_spool_disk_watermark_ratio 0.9" in text
    roomy = TestClient(create_app(url, spool_disk_used=lambda: 40.0, disk_watermark_percent=90.0),
                       base_url="http://127.0.0.1")
    assert roomy.get("/healthz").status_code == 200

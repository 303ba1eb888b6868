"""The commit point's building blocks: atomic spool writes, and listener statuses when commit fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_io.listener import (STATUS_OUT_OF_RESOURCES, Listener, ListenerConfig, OutOfResources,
                               ReceivedInstance, RejectedInstance)
from dicom_io.sender import send_files
from dicom_io.spool import Spool
from dicom_io.synthetic import chest_dataset
from peers import free_port


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

    def commit(self, instance: ReceivedInstance) -> None:
        self.attempts.append(instance)
        raise OutOfResources("disk full")

    def reject(self, rejected: RejectedInstance) -> None:
        raise AssertionError("a valid instance must not be rejected")


def test_listener_answers_out_of_resources_when_commit_fails(tmp_path: Path) -> None:
    receiver = FullReceiver()
    listener = Listener(ListenerConfig("CXR_TRIAGE", "127.0.0.1", free_port(), []), receiver)
    listener.start()
    try:
        path = tmp_path / "cr.dcm"
        chest_dataset().save_as(path, enforce_file_format=True)
        [result] = send_files([path], host="127.0.0.1", port=listener.port, called_aet="CXR_TRIAGE")
    finally:
        listener.stop()
    assert result.status == STATUS_OUT_OF_RESOURCES
    assert len(receiver.attempts) == 1
    assert receiver.attempts[0].data[128:132] == b"DICM"  # the encoded file exactly as a spool would take it


def test_header_drops_nul_characters_and_refuses_overlong_uids() -> None:
    from io import BytesIO

    from dicom_io.header import InvalidIdentifier
    from dicom_io.listener import parse_received
    from dicom_io.synthetic import chest_dataset

    def encoded(ds) -> bytes:  # type: ignore[no-untyped-def]
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    ds = chest_dataset(rows=16, columns=16)
    ds.PatientName = "DOE\x00^JANE\x00"
    assert parse_received(encoded(ds)).patient_name == "DOE^JANE"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        ds = chest_dataset(rows=16, columns=16)
        setattr(ds, keyword, "1.2." + "3" * 70)
        with pytest.raises(InvalidIdentifier, match=keyword):
            parse_received(encoded(ds))

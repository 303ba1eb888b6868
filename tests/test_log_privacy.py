"""Logs never carry patient data: the web access log keeps the path but not the query (a search term is a name),
and pydicom does not quote raw header bytes of a corrupted file while reading it."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_io.synthetic import chest_dataset
from triage.wiring import DropQueryStrings, configure_logging


def test_access_log_lines_keep_the_path_and_drop_the_search_terms() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/?q=SMITH%5EMARIA&status=DONE", "1.1", 200), None)
    assert DropQueryStrings().filter(record)
    line = record.getMessage()
    assert "SMITH" not in line and "q=" not in line and '"GET / HTTP/1.1" 200' in line


def test_reading_a_corrupted_header_logs_no_patient_data(tmp_path: Path) -> None:
    ds = chest_dataset(patient_index=4242, rows=32, columns=32)
    ds.PatientName = "SECRET^PATIENT"
    ds.PatientBirthDate = "19450101"
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    uid = str(ds.SOPInstanceUID).encode()
    # A UI value with the patient's name in it: pydicom's validation would quote it back.
    path.write_bytes(raw.replace(uid, b"SECRET^PATIENT19450101".ljust(len(uid), b"X")[:len(uid)]))
    configure_logging("DEBUG")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            read = dcmread(path, force=True)
            str(read.SOPInstanceUID), str(read.PatientName)  # every element parsed
    finally:
        logging.getLogger().removeHandler(handler)
    said = stream.getvalue() + " ".join(str(w.message) for w in caught)
    for secret in ("SECRET", "19450101", "PATIENT4242"):
        assert secret not in said, said


@pytest.fixture(autouse=True)
def _restore_pydicom_validation():  # type: ignore[no-untyped-def]
    from pydicom import config

    mode = config.settings.reading_validation_mode
    yield
    config.settings.reading_validation_mode = mode

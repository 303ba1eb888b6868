"""Fuzzing the receive path (hypothesis, bounded): whatever bytes arrive, the header parser answers with a header or
one of its three refusals, and the C-STORE handler with a defined DICOM status and a record, never an exception,
never a hang."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.errors import InvalidDicomError

from dicom_io.header import InvalidIdentifier, MissingIdentifier
from dicom_io.listener import (
    STATUS_CANNOT_PARSE,
    STATUS_INVALID_IDENTIFIER,
    STATUS_MISSING_IDENTIFIER,
    STATUS_SUCCESS,
    ReceivedInstance,
    RefusedAssociation,
    RejectedInstance,
    StoreHandler,
    parse_received,
)
from dicom_io.synthetic import chest_dataset


def _valid_file() -> bytes:
    buffer = BytesIO()
    chest_dataset(rows=8, columns=8).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


VALID = _valid_file()


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A real file with bytes overwritten, a slice cut out or inserted, or cut short."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[at:]
    return bytes(data)


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom says what it makes of each broken file

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(st.one_of(damaged(), st.binary(max_size=512)))
def test_the_header_parser_answers_every_input_with_a_header_or_a_refusal(data: bytes) -> None:
    try:
        header = parse_received(data)
    except (InvalidDicomError, MissingIdentifier, InvalidIdentifier):
        return
    assert header.sop_instance_uid and header.study_instance_uid


class Recorder:
    def __init__(self) -> None:
        self.committed: list[ReceivedInstance] = []
        self.rejected: list[RejectedInstance] = []

    def commit(self, instance: ReceivedInstance) -> None:
        self.committed.append(instance)

    def reject(self, rejected: RejectedInstance) -> None:
        self.rejected.append(rejected)

    def refuse_association(self, refused: RefusedAssociation) -> None:
        raise AssertionError("no association should be refused")


@FUZZ
@given(damaged())
def test_the_store_handler_answers_every_payload_with_a_status_and_a_record(data: bytes) -> None:
    receiver = Recorder()
    requestor = SimpleNamespace(ae_title="FUZZER", address="127.0.0.1", port=104)
    event = SimpleNamespace(assoc=SimpleNamespace(requestor=requestor), encoded_dataset=lambda: data,
                            request=SimpleNamespace(AffectedSOPInstanceUID="1.2.3"))
    status = StoreHandler(receiver)(event)  # type: ignore[arg-type]
    assert status in (STATUS_SUCCESS, STATUS_CANNOT_PARSE, STATUS_MISSING_IDENTIFIER, STATUS_INVALID_IDENTIFIER)
    assert len(receiver.committed) + len(receiver.rejected) == 1  # every payload leaves exactly one record
    if status != STATUS_SUCCESS:
        assert receiver.rejected[0].data == data and receiver.rejected[0].status == status

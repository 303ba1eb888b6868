"""The HL7 v2.5 ORU^R01 of a triage result: its content (checked with two independent parsers, hl7apy STRICT and
python-hl7) and its MLLP delivery to a real python-hl7 asyncio listener on loopback."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from worker.hl7_result import (
    Acknowledgement,
    Hl7DeliveryError,
    TriageObservation,
    build_oru,
    send_oru,
)

from hl7_peer import Answer, MllpListener, ack, framed
from peers import free_port

OBSERVED_AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
NOW = datetime(2026, 3, 4, 5, 6, 9, tzinfo=UTC)
SHA = "3f" * 32

FLAGGED = TriageObservation(
    accession_number="ACC20260304",
    patient_id="PAT-0042",
    patient_name="SMITH^MARIA",
    study_instance_uid="1.2.826.0.1.3680043.8.498.1234567890",
    flagged=True,
    score=0.87,
    threshold=0.5,
    reason=None,
    model_version="resnet50-pneumonia-2026.02",
    model_sha256=SHA,
    result_version=1,
    observed_at=OBSERVED_AT,
)
NOT_ANALYSED = replace(FLAGGED, flagged=None, score=None, threshold=None, reason="LATERAL_VIEW")


def parse(er7: str) -> hl7.Message:
    """python-hl7's view of a message (a second, independent parser)."""
    return hl7.parse(er7)


def field(message: hl7.Message, segment: str, number: int) -> str:
    """One field of the first such segment, unescaped."""
    return str(message.unescape(str(message.segment(segment)(number))))


def obx_rows(message: hl7.Message) -> dict[str, hl7.Segment]:
    """OBX segments by OBX-3 identifier code."""
    return {str(obx(3)(1)(1)): obx for obx in message.segments("OBX")}


def obx_value(message: hl7.Message, code: str) -> str:
    return str(message.unescape(str(obx_rows(message)[code](5))))


# -- the message --------------------------------------------------------------------------------------------------


def test_oru_is_valid_v25_and_carries_the_result() -> None:
    er7 = build_oru(FLAGGED, control_id="CTL0001", now=NOW)

    assert "\n" not in er7 and er7.endswith("\r")
    strict = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT)
    assert strict.name == "ORU_R01" and strict.validate()
    order = strict.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_3.ei_1.value == "ACC20260304"

    msg = parse(er7)
    assert [str(s(0)) for s in msg] == ["MSH", "PID", "ORC", "OBR"] + ["OBX"] * 7
    assert field(msg, "MSH", 9) == "ORU^R01^ORU_R01"
    assert field(msg, "MSH", 10) == "CTL0001"
    assert field(msg, "MSH", 11) == "P"
    assert field(msg, "MSH", 12) == "2.5"
    assert field(msg, "MSH", 18) == "UNICODE UTF-8"
    assert field(msg, "MSH", 3) == "CXR_TRIAGE"
    assert field(msg, "MSH", 7) == "20260304050609+0000"
    assert field(msg, "PID", 3) == "PAT-0042"
    assert field(msg, "PID", 5) == "SMITH^MARIA"
    assert field(msg, "ORC", 1) == "RE"
    assert field(msg, "ORC", 3) == "ACC20260304"
    assert field(msg, "OBR", 3) == "ACC20260304"
    assert field(msg, "OBR", 18) == "ACC20260304"
    assert field(msg, "OBR", 2) == "" and field(msg, "ORC", 2) == ""  # the placer's number is not ours to invent
    assert field(msg, "OBR", 4) == "CXRT^AI chest X-ray triage^99CXRT"
    assert field(msg, "OBR", 7) == field(msg, "OBR", 22) == "20260304050607+0000"
    assert field(msg, "OBR", 24) == "RAD"
    assert field(msg, "OBR", 25) == "F"

    rows = obx_rows(msg)
    assert [str(obx(1)) for obx in msg.segments("OBX")] == [str(i) for i in range(1, 8)]
    assert obx_value(msg, "CXRT-FLAG") == "FLAG^Pneumonia/COVID-19 likely - read first^99CXRT"
    assert str(rows["CXRT-FLAG"](2)) == "CE" and str(rows["CXRT-FLAG"](8)) == "A"
    assert str(rows["CXRT-SCORE"](2)) == "NM" and math.isclose(float(obx_value(msg, "CXRT-SCORE")), 0.87)
    assert str(rows["CXRT-SCORE"](6)) == "1^^UCUM"
    assert math.isclose(float(obx_value(msg, "CXRT-THRESHOLD")), 0.5)
    assert obx_value(msg, "111003") == "resnet50-pneumonia-2026.02"
    assert str(rows["111003"](3)) == "111003^Algorithm Version^DCM"
    assert obx_value(msg, "CXRT-WEIGHTS-SHA256") == SHA
    assert obx_value(msg, "110180") == FLAGGED.study_instance_uid
    assert str(rows["110180"](3)) == "110180^Study Instance UID^DCM"
    assert obx_value(msg, "CXRT-NOTICE") == "AI triage support - not a diagnosis"
    assert {str(obx(11)) for obx in msg.segments("OBX")} == {"F"}
    assert {str(obx(14)) for obx in msg.segments("OBX")} == {"20260304050607+0000"}


@pytest.mark.parametrize(("version", "status"), [(1, "F"), (2, "C"), (5, "C")])
def test_a_later_result_version_is_a_correction(version: int, status: str) -> None:
    msg = parse(build_oru(replace(FLAGGED, result_version=version), control_id="CTL0002", now=NOW))
    assert field(msg, "OBR", 25) == status
    assert {str(obx(11)) for obx in msg.segments("OBX")} == {status}


def test_unflagged_study_has_no_abnormal_flag() -> None:
    msg = parse(build_oru(replace(FLAGGED, flagged=False, score=0.12), control_id="CTL0003", now=NOW))
    assert obx_value(msg, "CXRT-FLAG") == "NOFLAG^No triage flag^99CXRT"
    assert str(obx_rows(msg)["CXRT-FLAG"](8)) == ""  # not "N": no flag does not mean a normal study
    assert float(obx_value(msg, "CXRT-SCORE")) == pytest.approx(0.12)


def test_not_analysed_study_says_why_and_has_no_score() -> None:
    er7 = build_oru(NOT_ANALYSED, control_id="CTL0004", now=NOW)
    assert parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT).validate()

    msg = parse(er7)
    rows = obx_rows(msg)
    assert "CXRT-SCORE" not in rows and "CXRT-THRESHOLD" not in rows
    assert not any(str(obx(2)) == "NM" for obx in msg.segments("OBX"))
    assert obx_value(msg, "CXRT-FLAG") == "NOTANALYSED^Not analysed: LATERAL_VIEW^99CXRT"
    assert str(rows["CXRT-FLAG"](8)) == ""
    assert obx_value(msg, "CXRT-REASON") == "LATERAL_VIEW"
    assert obx_value(msg, "110180") == FLAGGED.study_instance_uid
    assert obx_value(msg, "111003") == FLAGGED.model_version


def test_delimiters_in_values_are_escaped_and_pn_maps_to_xpn() -> None:
    observation = replace(
        FLAGGED,
        patient_name="O'BRIEN&SONS^MARIA|ANN^B^DR^JR=YAMADA^TARO",  # family^given^middle^prefix^suffix=ideographic
        patient_id="PAT&7",
        accession_number="ACC|9",
        model_version="resnet50 v2|final^rc&1~b\\x",
    )
    er7 = build_oru(observation, control_id="CTL0005", now=NOW)

    lines = er7.split("\r")
    assert lines[1] == "PID|||PAT\\T\\7||O'BRIEN\\T\\SONS^MARIA\\F\\ANN^B^JR^DR"  # XPN: ...^suffix^prefix
    assert "ORC|RE||ACC\\F\\9" in lines
    version_line = next(line for line in lines if line.startswith("OBX|4|"))
    assert "resnet50 v2\\F\\final\\S\\rc\\T\\1\\R\\b\\E\\x" in version_line
    assert len(version_line.split("|")) == 20  # the escaped "|" did not add fields

    strict = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT)
    assert strict.validate()
    msg = parse(er7)
    name = msg.segment("PID")(5)(1)
    assert [str(msg.unescape(str(name(i)))) for i in range(1, 6)] == ["O'BRIEN&SONS", "MARIA|ANN", "B", "JR", "DR"]
    assert field(msg, "PID", 3) == "PAT&7"
    assert field(msg, "OBR", 3) == field(msg, "OBR", 18) == "ACC|9"
    assert obx_value(msg, "111003") == "resnet50 v2|final^rc&1~b\\x"


def test_empty_patient_name_is_unspecified_not_deleted() -> None:
    er7 = build_oru(replace(FLAGGED, patient_name=""), control_id="CTL0006", now=NOW)
    assert parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT).validate()
    assert field(parse(er7), "PID", 5) == "^^^^^^U"  # name type U, never "" (which means "delete" in HL7)


@pytest.mark.parametrize(
    ("change", "control_id"),
    [
        ({"observed_at": datetime(2026, 3, 4, 5, 6, 7)}, "CTL0007"),  # naive time
        ({"score": float("nan")}, "CTL0008"),
        ({"accession_number": " "}, "CTL0009"),
        ({"patient_id": "PAT-0042-" + "9" * 300}, "CTL0010"),  # longer than ST allows: hl7apy's STRICT rejects it
        ({}, "C" * 21),  # MSH-10 is ST(20)
        ({}, "CTL|11"),
    ],
)
def test_unbuildable_observations_raise_value_error_without_patient_data(
    change: dict[str, Any], control_id: str
) -> None:
    with pytest.raises(ValueError) as raised:
        build_oru(replace(FLAGGED, **change), control_id=control_id, now=NOW)
    text = str(raised.value)
    assert "PAT-0042" not in text and "SMITH" not in text and "ACC2026" not in text


# -- MLLP delivery --------------------------------------------------------------------------------------------------

def test_listener_receives_the_oru_and_its_aa_is_accepted() -> None:
    er7 = build_oru(FLAGGED, control_id="CTL0100", now=NOW)
    with MllpListener(ack("AA")) as listener:
        acknowledgement = send_oru(er7, host="127.0.0.1", port=listener.port, timeout=10)
        received = listener.received.get(timeout=10)

    assert received == er7
    assert acknowledgement == Acknowledgement(code="AA", control_id="CTL0100", text="")
    assert acknowledgement.accepted


def test_ae_is_returned_not_raised() -> None:
    er7 = build_oru(NOT_ANALYSED, control_id="CTL0101", now=NOW)
    with MllpListener(ack("AE", "Unknown order | check accession")) as listener:
        acknowledgement = send_oru(er7, host="127.0.0.1", port=listener.port, timeout=10)
        assert listener.received.get(timeout=10) == er7

    assert acknowledgement.code == "AE" and not acknowledgement.accepted
    assert acknowledgement.control_id == "CTL0101"
    assert acknowledgement.text == "Unknown order | check accession"


def test_ack_split_across_reads_is_read_whole() -> None:
    def in_two_parts(message: hl7.Message) -> list[bytes]:
        whole = framed(message.create_ack("CA"))
        return [whole[:12], whole[12:]]

    er7 = build_oru(FLAGGED, control_id="CTL0102", now=NOW)
    with MllpListener(in_two_parts) as listener:
        acknowledgement = send_oru(er7, host="127.0.0.1", port=listener.port, timeout=10)
    assert acknowledgement.code == "CA" and acknowledgement.accepted


def test_closed_port_fails_fast() -> None:
    er7 = build_oru(FLAGGED, control_id="CTL0103", now=NOW)
    started = time.monotonic()
    with pytest.raises(Hl7DeliveryError):
        send_oru(er7, host="127.0.0.1", port=free_port(), timeout=1.0)
    assert time.monotonic() - started < 1.0


def test_silent_listener_times_out() -> None:
    er7 = build_oru(FLAGGED, control_id="CTL0104", now=NOW)
    with MllpListener(lambda message: None) as listener:
        started = time.monotonic()
        with pytest.raises(Hl7DeliveryError, match="within"):
            send_oru(er7, host="127.0.0.1", port=listener.port, timeout=0.5)
        elapsed = time.monotonic() - started
        assert listener.received.get(timeout=10) == er7
    assert 0.4 <= elapsed < 3.0


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda message: b"HTTP/1.1 400 Bad Request\r\n\r\n\x1c\x0d", id="not-mllp"),
        pytest.param(lambda message: b"\x0bnot hl7 at all\x1c\x0d", id="not-hl7"),
        pytest.param(lambda message: framed(str(message.segment("MSH")) + "\r"), id="no-msa"),
        pytest.param(lambda message: framed(message.create_ack("XX")), id="unknown-code"),
        pytest.param(lambda message: b"\x0bMSH|^~\\&|A", id="cut-short"),
        pytest.param(
            lambda message: framed(
                hl7.parse(str(message.create_ack("AA")).replace("|CTL0105", "|CTL9999")),
            ),
            id="other-control-id",
        ),
    ],
)
def test_unusable_answers_raise(answer: Answer) -> None:
    er7 = build_oru(FLAGGED, control_id="CTL0105", now=NOW)
    with MllpListener(answer) as listener:
        with pytest.raises(Hl7DeliveryError):
            send_oru(er7, host="127.0.0.1", port=listener.port, timeout=5)
        assert listener.received.get(timeout=10) == er7


def test_logs_name_the_study_and_control_id_never_the_patient(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="worker.hl7_result")
    er7 = build_oru(FLAGGED, control_id="CTL0106", now=NOW)
    with MllpListener(ack("AR", "Patient SMITH^MARIA unknown")) as listener:
        assert send_oru(er7, host="127.0.0.1", port=listener.port, timeout=10).code == "AR"
    with pytest.raises(Hl7DeliveryError):
        send_oru(er7, host="127.0.0.1", port=free_port(), timeout=1.0)

    logged = caplog.text
    assert "CTL0106" in logged and FLAGGED.study_instance_uid in logged
    for secret in ("PAT-0042", "SMITH", "MARIA", "ACC20260304"):
        assert secret not in logged

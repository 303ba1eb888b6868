"""The triage result of a study as an HL7 v2.5 ORU^R01 for the RIS, and its delivery over MLLP.

A RIS files results by order, not by DICOM study, so the message is keyed by the accession number: it is put in
ORC-3 / OBR-3 (filler order number: in radiology the RIS is the order filler and most RIS assign the accession
number as their order number) and in OBR-18 (placer field 1, where IHE Scheduled Workflow carries the accession
number). The placer order number (ORC-2 / OBR-2) belongs to the ordering system, which this service never sees,
so it is left empty rather than invented.

Field mapping (one ORDER_OBSERVATION group, OBX set ids numbered in order):

* MSH-9 ``ORU^R01^ORU_R01``, MSH-10 control id, MSH-11 processing id (``P``), MSH-12 ``2.5``, MSH-18 ``UNICODE UTF-8``
* PID-3 patient id (CX.1), PID-5 patient name (DICOM PN family^given^middle^prefix^suffix to XPN
  family^given^middle^suffix^prefix: DICOM and HL7 swap prefix and suffix)
* ORC-1 ``RE``; ORC-3 = OBR-3 = OBR-18 = accession number
* OBR-4 ``CXRT^AI chest X-ray triage^99CXRT``; OBR-7 observed_at; OBR-22 observed_at (when this result version
  was produced, so a retried send of the same version is identical apart from MSH-7/MSH-10); OBR-24 ``RAD``;
  OBR-25 ``F`` (result_version 1) or ``C`` (corrected, result_version > 1)
* OBX ``CXRT-FLAG`` (CE): ``FLAG`` / ``NOFLAG`` / ``NOTANALYSED``, OBX-8 ``A`` only when flagged. No ``N`` otherwise:
  "no triage flag" is not a statement that the study is normal.
* OBX ``CXRT-REASON`` (ST): reason code, only when not analysed
* OBX ``CXRT-SCORE`` (NM, units ``1^^UCUM``) and ``CXRT-THRESHOLD`` (NM): left out when unknown
* OBX ``111003^Algorithm Version^DCM`` (ST) and ``CXRT-WEIGHTS-SHA256`` (ST): which model produced the result
* OBX ``110180^Study Instance UID^DCM`` (ST): the DICOM study, with the DICOM code that PACS/RIS already use for it
* OBX ``CXRT-NOTICE`` (ST): "AI triage support - not a diagnosis"
* every OBX: OBX-11 ``F``/``C`` like OBR-25, OBX-14 and OBX-19 observed_at

``99CXRT`` is a local coding system (HL7 table 0396 "99zzz"): a name of its own cannot clash with another local
system a RIS already maps, as a bare ``L`` could.

Patient names, patient ids and accession numbers are never logged, nor put in exception messages (hl7apy's own
validation errors quote the offending value, so they are replaced): the study UID and the control id identify a
message in the logs.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import hl7
from hl7.client import MLLPClient
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Element, Message, Segment
from hl7apy.exceptions import HL7apyException
from hl7apy.factories import datatype_factory

log = logging.getLogger(__name__)

HL7_VERSION: Final = "2.5"
CODING_SYSTEM: Final = "99CXRT"
DICOM_CODING_SYSTEM: Final = "DCM"

#: OBR-4: what was done to the study.
SERVICE_ID: Final = ("CXRT", "AI chest X-ray triage", CODING_SYSTEM)

#: OBX-3 observation identifiers.
OBS_FLAG: Final = ("CXRT-FLAG", "AI pneumonia triage flag", CODING_SYSTEM)
OBS_REASON: Final = ("CXRT-REASON", "Reason not analysed", CODING_SYSTEM)
OBS_SCORE: Final = ("CXRT-SCORE", "AI pneumonia score", CODING_SYSTEM)
OBS_THRESHOLD: Final = ("CXRT-THRESHOLD", "AI flag threshold", CODING_SYSTEM)
OBS_ALGORITHM_VERSION: Final = ("111003", "Algorithm Version", DICOM_CODING_SYSTEM)
OBS_WEIGHTS_SHA256: Final = ("CXRT-WEIGHTS-SHA256", "Model weights SHA-256", CODING_SYSTEM)
OBS_STUDY_UID: Final = ("110180", "Study Instance UID", DICOM_CODING_SYSTEM)
OBS_NOTICE: Final = ("CXRT-NOTICE", "Notice", CODING_SYSTEM)

#: OBX-5 codes of the flag observation.
FLAG_CODE: Final = "FLAG"
NO_FLAG_CODE: Final = "NOFLAG"
NOT_ANALYSED_CODE: Final = "NOTANALYSED"
FLAG_TEXT: Final = "Pneumonia/COVID-19 likely - read first"
NO_FLAG_TEXT: Final = "No triage flag"
NOT_ANALYSED_TEXT: Final = "Not analysed"
NOTICE_TEXT: Final = "AI triage support - not a diagnosis"

#: UCUM "1": the score and the threshold are dimensionless (not claimed to be calibrated probabilities).
SCORE_UNITS: Final = ("1", "", "UCUM")

_MAX_CONTROL_ID = 20  # MSH-10 is ST(20) in v2.5
_ENCODING_CHARS: Final = {"FIELD": "|", "COMPONENT": "^", "REPETITION": "~", "ESCAPE": "\\", "SUBCOMPONENT": "&"}
_ACK_CODES: Final = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_MAX_ACK_BYTES = 1 << 20  # an ACK is a few hundred bytes; stop reading garbage long before memory suffers


@dataclass(frozen=True)
class TriageObservation:
    """One version of the triage result of one study, as the RIS should file it."""

    accession_number: str
    patient_id: str
    patient_name: str  # DICOM PN, e.g. "SMITH^MARIA"
    study_instance_uid: str
    flagged: bool | None  # None = the study could not be analysed (normal read)
    score: float | None
    threshold: float | None
    reason: str | None  # reason code when not analysed, e.g. "LATERAL_VIEW"
    model_version: str
    model_sha256: str
    result_version: int  # 1, 2, ...: a later version replaces an earlier one
    observed_at: datetime  # aware, UTC

    def __post_init__(self) -> None:
        # Checked here, not at build time, so a bad observation fails where it is made, not at the retry loop.
        if self.observed_at.tzinfo is None or self.observed_at.utcoffset() is None:
            raise ValueError("observed_at must be timezone-aware")
        if self.result_version < 1:
            raise ValueError(f"result_version must be >= 1, not {self.result_version}")
        if self.flagged is not None and self.score is None:
            raise ValueError("an analysed study (flagged True/False) needs its score")


def build_oru(
    observation: TriageObservation,
    *,
    control_id: str,
    sending_application: str = "CXR_TRIAGE",
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    now: datetime | None = None,
    processing_id: str = "P",
) -> str:
    """Return the ORU^R01 (ER7, every segment terminated by ``\\r``) built and validated with hl7apy.

    Validation is hl7apy's STRICT level against the v2.5 ORU_R01 structure: every assignment is checked against
    the field's datatype, and the finished message against the segment groups, required fields and cardinalities.
    Raises ValueError (without patient data in its text) when the observation cannot make a valid message.
    """
    if not 0 < len(control_id) <= _MAX_CONTROL_ID or not control_id.isascii() or _has_separator(control_id):
        raise ValueError(f"control_id must be 1-{_MAX_CONTROL_ID} ASCII characters without HL7 separators")
    if not observation.accession_number.strip():
        raise ValueError(f"study {observation.study_instance_uid}: no accession number, the RIS cannot file it")
    if not observation.patient_id.strip():
        raise ValueError(f"study {observation.study_instance_uid}: no patient id (PID-3 is required)")
    now = now or datetime.now(UTC)
    try:
        message = _build(observation, control_id, sending_application, sending_facility, receiving_application,
                         receiving_facility, now, processing_id)
        message.validate()
        er7: str = message.to_er7()
    except HL7apyException as exc:
        # hl7apy's message quotes the rejected value (possibly a name or an id): keep only its kind.
        raise ValueError(
            f"study {observation.study_instance_uid}: ORU {control_id} is not valid HL7 v{HL7_VERSION} "
            f"({type(exc).__name__})"
        ) from None
    log.debug("built ORU %s for study %s (version %d)", control_id, observation.study_instance_uid,
              observation.result_version)
    return er7 + "\r"  # the segment terminator ends the last segment too


def _build(
    obs: TriageObservation,
    control_id: str,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    now: datetime,
    processing_id: str,
) -> Message:
    """The hl7apy message tree. Outside data goes in through :func:`_put_text`; constants as plain strings."""
    status = "F" if obs.result_version == 1 else "C"
    observed = _ts(obs.observed_at)
    message = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = message.msh
    for field, value in ((msh.msh_3, sending_application), (msh.msh_4, sending_facility),
                         (msh.msh_5, receiving_application), (msh.msh_6, receiving_facility)):
        if value:
            _put_text(field, "hd_1", value)
    msh.msh_7.ts_1 = _ts(now)
    msh.msh_9.msg_1 = "ORU"
    msh.msh_9.msg_2 = "R01"
    msh.msh_9.msg_3 = "ORU_R01"
    _put_text(msh, "msh_10", control_id)
    msh.msh_11.pt_1 = processing_id
    msh.msh_18 = "UNICODE UTF-8"

    result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    _put_text(pid.pid_3, "cx_1", obs.patient_id)
    _set_name(pid, obs.patient_name)

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.orc.orc_1 = "RE"
    _put_text(order.orc.orc_3, "ei_1", obs.accession_number)
    obr = order.obr
    obr.obr_1 = "1"
    _put_text(obr.obr_3, "ei_1", obs.accession_number)
    obr.obr_4.ce_1, obr.obr_4.ce_2, obr.obr_4.ce_3 = SERVICE_ID
    obr.obr_7.ts_1 = observed
    _put_text(obr, "obr_18", obs.accession_number)
    obr.obr_22.ts_1 = observed
    obr.obr_24 = "RAD"
    obr.obr_25 = status

    for set_id, (value_type, identifier, components, units, abnormal) in enumerate(_observations(obs), start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(set_id)
        obx.obx_2 = value_type
        obx.obx_3.ce_1, obx.obx_3.ce_2, obx.obx_3.ce_3 = identifier
        # OBX-5 is of type "varies": hl7apy reads a string there as ER7 and escapes only '|', '~' and '\', so
        # the components are escaped here, one by one, and joined with the component separator.
        obx.obx_5 = "^".join(_escape(part) for part in components)
        if units:
            obx.obx_6.ce_1, obx.obx_6.ce_2, obx.obx_6.ce_3 = units
        if abnormal:
            obx.obx_8 = abnormal
        obx.obx_11 = status
        obx.obx_14.ts_1 = observed
        obx.obx_19.ts_1 = observed
    return message


_Obx = tuple[str, tuple[str, str, str], tuple[str, ...], tuple[str, str, str] | None, str]


def _observations(obs: TriageObservation) -> list[_Obx]:
    """The OBX rows: value type, OBX-3, OBX-5 components (unescaped), OBX-6, OBX-8."""
    if obs.flagged is None:
        text = f"{NOT_ANALYSED_TEXT}: {obs.reason}" if obs.reason else NOT_ANALYSED_TEXT
        flag = (NOT_ANALYSED_CODE, text, CODING_SYSTEM)
    elif obs.flagged:
        flag = (FLAG_CODE, FLAG_TEXT, CODING_SYSTEM)
    else:
        flag = (NO_FLAG_CODE, NO_FLAG_TEXT, CODING_SYSTEM)
    rows: list[_Obx] = [("CE", OBS_FLAG, flag, None, "A" if obs.flagged else "")]
    if obs.flagged is None and obs.reason:
        rows.append(("ST", OBS_REASON, (obs.reason,), None, ""))
    if obs.score is not None:
        rows.append(("NM", OBS_SCORE, (_nm(obs.score),), SCORE_UNITS, ""))
    if obs.threshold is not None:
        rows.append(("NM", OBS_THRESHOLD, (_nm(obs.threshold),), SCORE_UNITS, ""))
    rows += [
        ("ST", OBS_ALGORITHM_VERSION, (obs.model_version,), None, ""),
        ("ST", OBS_WEIGHTS_SHA256, (obs.model_sha256,), None, ""),
        ("ST", OBS_STUDY_UID, (obs.study_instance_uid,), None, ""),
        ("ST", OBS_NOTICE, (NOTICE_TEXT,), None, ""),
    ]
    return rows


def _set_name(pid: Segment, dicom_name: str) -> None:
    """DICOM PN to XPN. Only the first non-empty component group (normally the alphabetic one) is used: XPN has no
    place for DICOM's ideographic and phonetic groups. An empty name is sent as name type U (unspecified),
    never as ``""``, which a RIS would read as "delete the name"."""
    group = next((g for g in dicom_name.split("=") if g.strip("^ ")), "")
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    xpn = pid.pid_5
    if not any((family, given, middle, prefix, suffix)):
        xpn.xpn_7 = "U"
        return
    for component, value in (("xpn_2", given), ("xpn_3", middle), ("xpn_4", suffix), ("xpn_5", prefix)):
        if value:
            _put_text(xpn, component, value)
    if family:
        _put_text(xpn.xpn_1, "fn_1", family)


def _put_text(parent: Element, name: str, value: str) -> None:
    """Set a leaf to text that hl7apy escapes on output. A plain string would be read as ER7: an '&' in a patient
    id would become a sub-component separator (and fail STRICT validation), so a datatype object is assigned."""
    datatype = getattr(parent, name).datatype
    setattr(parent, name, datatype_factory(datatype, value, version=HL7_VERSION,
                                           validation_level=VALIDATION_LEVEL.STRICT))


def _ts(moment: datetime) -> str:
    """HL7 TS in UTC with an explicit offset, so no receiver has to guess our time zone."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _nm(value: float) -> str:
    """HL7 NM: plain decimal (no exponent, which NM does not allow), at most 6 decimals."""
    if not math.isfinite(value):
        raise ValueError("score and threshold must be finite numbers")
    text = f"{value + 0.0:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _escape(text: str) -> str:
    """Escape HL7 delimiters in text (the escape character first, so the sequences added are not escaped again)."""
    esc = _ENCODING_CHARS["ESCAPE"]
    text = text.replace(esc, f"{esc}E{esc}")
    for name, code in (("FIELD", "F"), ("COMPONENT", "S"), ("SUBCOMPONENT", "T"), ("REPETITION", "R")):
        text = text.replace(_ENCODING_CHARS[name], f"{esc}{code}{esc}")
    # A segment terminator inside a value would end the segment; these are one-line texts, so a space will do.
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def _has_separator(text: str) -> bool:
    return any(c in text for c in (*_ENCODING_CHARS.values(), "\r", "\n"))


@dataclass(frozen=True)
class Acknowledgement:
    """The receiver's answer (MSA) to one message."""

    code: str  # MSA-1: AA, AE, AR (or CA/CE/CR in enhanced mode)
    control_id: str  # MSA-2: the MSH-10 of the message acknowledged
    text: str  # MSA-3, unescaped; may be ""

    @property
    def accepted(self) -> bool:
        """True for AA and CA: the RIS has the result; anything else is for the caller to retry or report."""
        return self.code in ("AA", "CA")


class Hl7DeliveryError(Exception):
    """No usable acknowledgement: connection refused, timeout, unparsable answer, or an answer to another message.

    Whether the receiver got the message is unknown, so the caller retries with the same result version.
    """


class _DeadlineMLLPClient(MLLPClient):
    """python-hl7's MLLP client with one deadline for connect, send and the whole ACK frame.

    The parent connects without a timeout (a silent host blocks for minutes), sends with ``send`` (may write
    part of a long message) and returns whatever the first ``recv`` yields (possibly part of an ACK).
    """

    def __init__(self, host: str, port: int, *, timeout: float, encoding: str = "utf-8") -> None:
        # Not super().__init__(): that connects before a timeout can be set.
        self._deadline = time.monotonic() + timeout
        self.socket = socket.create_connection((host, port), timeout=timeout)
        self.encoding = encoding

    def _remaining(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        return remaining

    def send(self, data: bytes) -> bytes:
        """Send an MLLP-framed block and return the complete answer frame (start block to end block + CR)."""
        self.socket.settimeout(self._remaining())
        self.socket.sendall(data)
        received = bytearray()
        end = hl7.client.EB + hl7.client.CR
        while end not in received:
            if len(received) > _MAX_ACK_BYTES:
                raise Hl7DeliveryError(f"answer longer than {_MAX_ACK_BYTES} bytes without an MLLP end block")
            self.socket.settimeout(self._remaining())
            chunk = self.socket.recv(hl7.client.RECV_BUFFER)
            if not chunk:
                raise Hl7DeliveryError(f"connection closed after {len(received)} bytes, before a complete ACK")
            received += chunk
        return bytes(received[: received.index(end) + len(end)])


def send_oru(message: str, *, host: str, port: int, timeout: float = 30.0) -> Acknowledgement:
    """Send ``message`` over MLLP and return the receiver's acknowledgement, whatever its code.

    ``timeout`` bounds the whole exchange (connect, send, ACK). Raises Hl7DeliveryError when no acknowledgement of
    this message comes back; an AE/AR answer is returned, not raised, so the caller decides between retry and alarm.
    """
    control_id = _control_id(message)
    try:
        with _DeadlineMLLPClient(host, port, timeout=timeout) as client:
            frame: bytes = client.send_message(message)
    except Hl7DeliveryError as exc:
        log.warning("ORU %s to %s:%d: %s", control_id, host, port, exc)
        raise
    except TimeoutError as exc:  # socket.timeout is TimeoutError since Python 3.10
        log.warning("ORU %s to %s:%d: no ACK within %.1f s", control_id, host, port, timeout)
        raise Hl7DeliveryError(f"no ACK from {host}:{port} within {timeout} s") from exc
    except OSError as exc:
        log.warning("ORU %s to %s:%d: %s", control_id, host, port, type(exc).__name__)
        raise Hl7DeliveryError(f"cannot deliver to {host}:{port}: {exc}") from exc
    ack = _parse_ack(frame, control_id)
    log.info("ORU %s delivered to %s:%d: %s", control_id, host, port, ack.code)
    return ack


def _control_id(message: str) -> str:
    """MSH-10 of our own message (a ValueError here is a programming error, not a delivery failure)."""
    try:
        control_id = str(hl7.parse(message).segment("MSH")(10))
    except (hl7.ParseException, KeyError, IndexError) as exc:
        raise ValueError("not an HL7 message with an MSH segment") from exc
    if not control_id:
        raise ValueError("the message has no control id (MSH-10)")
    return control_id


def _parse_ack(frame: bytes, control_id: str) -> Acknowledgement:
    """The MSA of an MLLP frame; Hl7DeliveryError unless it is an ACK of ``control_id``.

    The error texts never quote the answer: a RIS's error text may name the patient.
    """
    if not frame.startswith(hl7.client.SB):
        raise Hl7DeliveryError("answer does not start with the MLLP start block")
    text = frame[1:-2].decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    try:
        answer = hl7.parse(text)
        msa = answer.segment("MSA")
    except (hl7.ParseException, KeyError, IndexError):
        raise Hl7DeliveryError(f"answer to ORU {control_id} is not an HL7 message with an MSA segment") from None
    code = str(msa(1)) if len(msa) > 1 else ""
    acknowledged = str(msa(2)) if len(msa) > 2 else ""
    if code not in _ACK_CODES:
        raise Hl7DeliveryError(f"answer to ORU {control_id} has an unknown acknowledgement code")
    if acknowledged != control_id:
        raise Hl7DeliveryError(f"answer acknowledges another message, not ORU {control_id}")
    reason = answer.unescape(str(msa(3))) if len(msa) > 3 else ""
    return Acknowledgement(code=code, control_id=acknowledged, text=reason)

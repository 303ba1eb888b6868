"""The triage result of one study as a DICOM Structured Report, so the PACS shows it beside the images it describes.

SOP class: Comprehensive 3D SR. IHE AI Results (AIR) has AI results encoded as TID 1500 Measurement Reports in the
Comprehensive 3D SR SOP class, which highdicom builds directly (`highdicom.sr.Comprehensive3DSR`); this tree holds no
coordinates and would be valid Comprehensive SR too, but following AIR is what AIR-conformant displays expect.

Codes used (standard ones are taken from pydicom's copy of the DICOM code dictionary where it has them):

- procedure reported / performed: SCT 399208008 "Plain chest X-ray" (view-count independent, unlike LOINC 36554-4
  and 36643-5);
- finding: SCT 233604007 "Pneumonia" (the model's positive class, pneumonia including COVID-19 pneumonia, is a kind
  of pneumonia), valued from CID 240 "Present-Absent": SCT 52101004 "Present", 272519000 "Absent" (the DICOM code
  for absent; SNOMED's 2667000 is not in CID 240), 373068000 "Undetermined" when no image could be scored;
- triage flag: private 99CXRTRIAGE TRIAGE_FLAG "Triage priority high", valued from CID 230: SCT 373066001 "Yes",
  373067005 "No";
- scores: private 99CXRTRIAGE PNEUMONIA_SCORE "Pneumonia triage score" (a model output, not a calibrated
  probability), unit UCUM "1" "no units"; operating threshold: DCM 122411 "Threshold Value", unit UCUM "1";
- image not analysed: private 99CXRTRIAGE NOT_ANALYSED "Image not analysed", valued with the worker's reason code
  (LATERAL_VIEW, NOT_CHEST, ...) in the same private scheme, declared in CodingSchemeIdentificationSequence (a code
  over 16 characters, such as UNREADABLE_PIXEL_DATA, goes in Long Code Value, as DICOM requires).
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, DT, TM, validate_value

from dicom_io.reasons import Reason

PRIVATE_SCHEME = "99CXRTRIAGE"
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "AI triage (cxr-triage) - not for diagnosis"
PRODUCT_NAME = "cxr-triage"

PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
PRESENT = hd.sr.CodedConcept.from_code(codes.SCT.Present)
ABSENT = hd.sr.CodedConcept.from_code(codes.SCT.Absent)
UNDETERMINED = hd.sr.CodedConcept.from_code(codes.SCT.Undetermined)
YES = hd.sr.CodedConcept.from_code(codes.SCT.Yes)
NO = hd.sr.CodedConcept.from_code(codes.SCT.No)
THRESHOLD_VALUE = hd.sr.CodedConcept.from_code(codes.DCM.ThresholdValue)
NO_UNITS = hd.sr.CodedConcept.from_code(codes.UCUM.NoUnits)
PNEUMONIA_SCORE = hd.sr.CodedConcept("PNEUMONIA_SCORE", PRIVATE_SCHEME, "Pneumonia triage score")
TRIAGE_FLAG = hd.sr.CodedConcept("TRIAGE_FLAG", PRIVATE_SCHEME, "Triage priority high")
NOT_ANALYSED = hd.sr.CodedConcept("NOT_ANALYSED", PRIVATE_SCHEME, "Image not analysed")

# The Code Meaning of each reason code in the SR (the worklist's words for them live in worklist.presentation,
# which sits above this layer; tests check both cover every code).
REASON_MEANINGS: dict[str, str] = {
    Reason.LATERAL_VIEW: "Lateral view",
    Reason.NOT_CHEST: "Not a chest image",
    Reason.MULTIFRAME: "Multi-frame image",
    Reason.NO_PIXEL_DATA: "No pixel data",
    Reason.UNREADABLE_PIXEL_DATA: "Unreadable pixel data",
    Reason.UNSUPPORTED_SOP_CLASS: "Not a radiograph",
    Reason.BLANK_IMAGE: "Blank or constant image",
    Reason.SPOOL_FILE_MISSING: "File missing from the spool",
    Reason.UNREADABLE_DICOM: "Unreadable DICOM file",
    Reason.TOO_MANY_ATTEMPTS: "Gave up after repeated attempts",
    Reason.INTERNAL_ERROR: "Internal error",
}
# Text VRs whose values are checked before a source's patient and study attributes are copied (UIDs are not: the
# report could not join the study without them).
_CHECKED_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
_REASON_CODE = re.compile(r"[A-Z0-9_]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Patient and study attributes that the SR constructor reads straight from the first source: Type 2 in every
# source IOD, but absent from some real headers (and from synthetic ones), so they are added empty when missing.
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                        "StudyDate", "StudyTime", "ReferringPhysicianName")

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr-triage:dicom-report")
_HELD_BACK_NAMES = ("PatientName", "ReferringPhysicianName")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFinding:
    """One received image of the study and what the model made of it."""

    source: Dataset  # header of a received image of the study (read with stop_before_pixels=True; no pixel data)
    score: float | None  # model score in [0,1]; None when the image was not analysed
    reason: str | None = None  # reason code when not analysed, e.g. "LATERAL_VIEW", "NOT_CHEST"

    def __post_init__(self) -> None:
        if self.score is None:
            if not self.reason or not _REASON_CODE.fullmatch(self.reason):
                raise ValueError("an image without a score needs a reason code (upper case, digits, underscores)")
        else:
            _check_unit_interval("image score", self.score)
            if self.reason is not None:
                raise ValueError("a scored image carries no not-analysed reason")


@dataclass(frozen=True)
class Algorithm:
    """What produced the result: recorded so a reader can tell which model and weights made each score."""

    name: str  # e.g. "cxr-triage pneumonia triage (ResNet50)"
    version: str  # model version, e.g. "cxr-resnet50-mixed-v8"
    weights_sha256: str  # 64 hex chars
    software_version: str  # the cxr-triage package version

    def __post_init__(self) -> None:
        if not _SHA256.fullmatch(self.weights_sha256.lower()):
            raise ValueError("weights_sha256 must be 64 hexadecimal characters")
        if not self.name or not self.version or not self.software_version:
            raise ValueError("algorithm name, version and software version are required")


@dataclass(frozen=True)
class StudyResult:
    """The study's triage outcome: its score is the highest image score, flagged when at or above the threshold."""

    score: float | None  # study score = highest image score; None when no image could be analysed
    threshold: float  # NaN allowed only without a score: no image was scored, so no operating point applied
    flagged: bool
    images: Sequence[ImageFinding]  # at least one

    def __post_init__(self) -> None:
        if not (self.score is None and isinstance(self.threshold, numbers.Real) and math.isnan(self.threshold)):
            _check_unit_interval("threshold", self.threshold)
        if not self.images:
            raise ValueError("a study result needs at least one image")
        if self.score is None:
            if self.flagged:
                raise ValueError("a study without a score cannot be flagged")
        else:
            _check_unit_interval("study score", self.score)
            if self.flagged != (self.score >= self.threshold):
                raise ValueError("flagged must be score >= threshold; the report would contradict itself")


def _check_unit_interval(what: str, value: float) -> None:
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and 0.0 <= value <= 1.0):  # numpy floats too
        raise ValueError(f"{what} must be a finite number in [0, 1]")


def _uid(*parts: str) -> str:
    """A name-based (UUID v5) UID from the inputs, so the same report rebuilt carries the same tracking and device
    UIDs (pydicom's generate_uid ignores its entropy sources under the 2.25 root)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0).join(parts)).int}"


def _reason_concept(reason: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(reason, PRIVATE_SCHEME, REASON_MEANINGS.get(reason, reason))


def _source(image: Dataset) -> hd.sr.SourceImageForMeasurementGroup:
    """A reference by UIDs alone: `from_source_image` would refuse headers without pixel attributes, yet an image
    with no (or broken) pixel data still has to be reported as not analysed."""
    return hd.sr.SourceImageForMeasurementGroup(referenced_sop_class_uid=str(image.SOPClassUID),
                                                referenced_sop_instance_uid=str(image.SOPInstanceUID))


def _score(value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=PNEUMONIA_SCORE, value=float(value), unit=NO_UNITS)


def _is_valid(element: DataElement) -> bool:
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    try:
        for value in values:
            validate_value(element.VR, "" if value is None else str(value), config.RAISE)
    except ValueError:
        return False
    return True


def header_for_study_copy(source: Dataset) -> tuple[Dataset, dict[str, Any]]:
    """A cleaned copy of `source` for highdicom to copy patient and study attributes from, and the person names held
    back from it, to be set on the new object afterwards.

    Headers in the wild carry values their VR forbids (e.g. Patient's Age "62"); copied over they would make the
    new object invalid, so such a value is emptied (Type 2) or left out, never repaired by guessing. Missing Type 2
    attributes are added empty. Person names are held back because highdicom warns about an unusual name by quoting
    it, and a warning can end up in a log.
    """
    header = copy.deepcopy(source)
    invalid = [element for element in header
               if element.VR in _CHECKED_VRS and element.value not in (None, "") and not _is_valid(element)]
    for element in invalid:
        if element.keyword in _TYPE2_PATIENT_STUDY:
            header[element.tag].value = None
        else:
            del header[element.tag]
    if invalid:  # keywords only: the values may be patient data
        logger.info("source attributes left out, values invalid for their VR: %s",
                    ", ".join(element.keyword or str(element.tag) for element in invalid))
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, None)
    names = {keyword: header[keyword].value for keyword in _HELD_BACK_NAMES}
    for keyword in _HELD_BACK_NAMES:
        header[keyword].value = None
    return header, names


def _study_group(result: StudyResult, algorithm_id: hd.sr.AlgorithmIdentification,
                 sop_instance_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The study-level answer: finding present/absent, study score, threshold and triage flag."""
    if result.score is None:
        presence, measurements = UNDETERMINED, []
    else:
        presence = PRESENT if result.flagged else ABSENT
        measurements = [_score(result.score)]
    if not math.isnan(result.threshold):
        measurements.append(hd.sr.Measurement(name=THRESHOLD_VALUE, value=float(result.threshold), unit=NO_UNITS))
    scored = [image.source for image in result.images if image.score is not None]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(sop_instance_uid, "study"),
                                                     identifier="cxr-triage study result"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm_id,
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(PNEUMONIA, presence),
            hd.sr.QualitativeEvaluation(TRIAGE_FLAG, YES if result.flagged else NO),
        ],
        source_images=[_source(ds) for ds in scored] or None,
    )


def _image_group(image: ImageFinding, algorithm_id: hd.sr.AlgorithmIdentification,
                 sop_instance_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One image: its score, or why it was not analysed, referencing the image itself."""
    scored = image.score is not None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(sop_instance_uid, str(image.source.SOPInstanceUID)),
                                                     identifier="cxr-triage image result"),
        finding_type=PNEUMONIA if scored else None,
        algorithm_id=algorithm_id,
        measurements=[_score(image.score)] if image.score is not None else None,
        qualitative_evaluations=None if scored else [
            hd.sr.QualitativeEvaluation(NOT_ANALYSED, _reason_concept(image.reason or ""))],
        source_images=[_source(image.source)],
    )


def _check_sources(result: StudyResult, previous_versions: Sequence[Dataset], sop_instance_uid: str) -> None:
    """All inputs belong to one study and name each image once: one report answers for exactly one study."""
    study_uids = {str(image.source.StudyInstanceUID) for image in result.images}
    if len(study_uids) != 1:
        raise ValueError("all images of a study result must share one StudyInstanceUID")
    sop_uids = [str(image.source.SOPInstanceUID) for image in result.images]
    if len(set(sop_uids)) != len(sop_uids):
        raise ValueError("an image appears twice in the study result")
    (study_uid,) = study_uids
    for previous in previous_versions:
        if str(previous.StudyInstanceUID) != study_uid:
            raise ValueError("a previous version belongs to another study")
        if str(previous.SOPInstanceUID) == sop_instance_uid:
            raise ValueError("the new report needs its own SOP instance UID, not a previous version's")


def build_report(result: StudyResult, algorithm: Algorithm, *, series_instance_uid: str, sop_instance_uid: str,
                 instance_number: int, previous_versions: Sequence[Dataset] = (),
                 manufacturer: str = "cxr-triage", institution_name: str | None = None,
                 content_datetime: datetime | None = None) -> Dataset:
    """The Comprehensive 3D SR (TID 1500) that carries one study's triage result back to the PACS.

    It joins the original study (patient and study modules copied from the first image, evidence = every image),
    lives in its own "not for diagnosis" series, and replaces `previous_versions` (earlier reports of this study's
    triage) through the Predecessor Documents Sequence. Given `content_datetime`, the dataset is the same for the
    same inputs; otherwise highdicom stamps content, creation and contribution times with the current time.
    """
    _check_sources(result, previous_versions, sop_instance_uid)
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, manufacturer=manufacturer,
        parameters=[f"weights_sha256={algorithm.weights_sha256.lower()}"])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid(algorithm.version, algorithm.weights_sha256.lower()), name=algorithm.name,
        manufacturer_name=manufacturer, model_name=algorithm.version)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(observer_type=codes.cid270.Device,
                                                          observer_identifying_attributes=device)),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=[_study_group(result, algorithm_id, sop_instance_uid),
                              *(_image_group(image, algorithm_id, sop_instance_uid) for image in result.images)],
    )
    sources = [image.source for image in result.images]
    header, names = header_for_study_copy(sources[0])
    timing: dict[str, Any] = {}
    if content_datetime is not None:
        timing = {"content_date": content_datetime.date(), "content_time": content_datetime.time()}
    sr = hd.sr.Comprehensive3DSR(
        evidence=[header, *sources[1:]],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        institution_name=institution_name,
        is_complete=True,
        is_final=False,  # triage support, never the definitive report of the study
        is_verified=False,
        performed_procedure_codes=[PLAIN_CHEST_XRAY],
        previous_versions=list(previous_versions) or None,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=PRODUCT_NAME,
        software_versions=algorithm.software_version,
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="cxr-triage codes",
            responsible_organization=manufacturer)],
        **timing,
    )
    for keyword, value in names.items():
        setattr(sr, keyword, value)
    if content_datetime is not None:
        sr.InstanceCreationDate, sr.InstanceCreationTime = DA(content_datetime.date()), TM(content_datetime.time())
        for item in sr.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:
                item.ContributionDateTime = DT(content_datetime)
    return sr

"""The few header attributes the product records about a received instance (read without touching pixels)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from pydicom.dataset import Dataset


class MissingIdentifier(ValueError):
    """The dataset lacks a UID the product needs to file it (study, series or instance)."""


class InvalidIdentifier(ValueError):
    """A UID breaks DICOM's rules (over 64 characters, or control characters): no retry can ever file it."""


UID_MAX_LENGTH = 64  # PS3.5 §9.1
MAX_AGE_YEARS = 130  # older than anyone has lived: a placeholder birth date (1900-01-01) or a typo, not an age
SEXES = frozenset({"M", "F", "O"})  # PatientSex's defined terms (PS3.3 C.7.1.1)
# RequestedProcedurePriority's defined terms (PS3.3 C.4.11), most urgent first.
PRIORITIES = ("STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW")
_AGE = re.compile(r"^(\d{1,3})([DWMY]?)$")  # AS "045Y"; a bare "62" (as some de-identified sets write) is years
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class InstanceHeader:
    """Identifiers and worklist columns of one instance; patient data here is stored, never logged."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: date | None
    study_description: str
    body_part: str
    view_position: str
    # Context for the reader (study level; header only). None or "" when the file does not say.
    patient_age_years: int | None = None
    patient_sex: str | None = None
    institution: str = ""
    station: str = ""
    priority: str | None = None


def _text(ds: Dataset, keyword: str) -> str:
    """The value as text, NUL characters dropped (padding from broken writers; no database can store them)."""
    value = ds.get(keyword)
    return "" if value is None else str(value).replace("\x00", "").strip()


def _date(ds: Dataset, keyword: str) -> date | None:
    raw = _text(ds, keyword)
    try:
        return datetime.strptime(raw[:8], "%Y%m%d").date() if raw else None
    except ValueError:
        return None


def _study_date(ds: Dataset) -> date | None:
    return _date(ds, "StudyDate")


def age_from_text(text: str) -> int | None:
    """Whole years from a PatientAge ("045Y" → 45, "006M" → 0); None for anything else or an absurd age."""
    match = _AGE.match(text.strip().upper())
    if match is None:
        return None
    years = int(int(match.group(1)) * _DAYS_PER[match.group(2) or "Y"] // 365.25)
    return years if years <= MAX_AGE_YEARS else None


def age_from_dates(birth: date | None, on: date | None) -> int | None:
    """Whole years between birth date and study date; None when either is missing or the span is absurd."""
    if birth is None or on is None:
        return None
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return years if 0 <= years <= MAX_AGE_YEARS else None


def patient_age_years(ds: Dataset) -> int | None:
    """PatientAge when it parses, else birth date to study date (the age on the day of the image)."""
    stated = age_from_text(_text(ds, "PatientAge"))
    return stated if stated is not None else age_from_dates(_date(ds, "PatientBirthDate"), _study_date(ds))


def patient_sex(ds: Dataset) -> str | None:
    sex = _text(ds, "PatientSex").upper()
    return sex if sex in SEXES else None


def normalise_priority(text: str | None) -> str | None:
    """One of PRIORITIES (case and padding ignored), or None for anything else."""
    value = (text or "").strip().upper()
    return value if value in PRIORITIES else None


def order_priority(ds: Dataset) -> str | None:
    """RequestedProcedurePriority (0040,1003) of the file or of any RequestAttributesSequence item; the most urgent
    when they differ."""
    found = [normalise_priority(_text(ds, "RequestedProcedurePriority"))]
    for item in ds.get("RequestAttributesSequence") or []:
        found.append(normalise_priority(_text(item, "RequestedProcedurePriority")))
    known = [value for value in found if value is not None]
    return min(known, key=PRIORITIES.index) if known else None


def read_header(ds: Dataset, transfer_syntax_uid: str = "") -> InstanceHeader:
    """Extract the header; raise MissingIdentifier when the instance cannot be filed under a study."""
    identifiers = {kw: _text(ds, kw) for kw in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID")}
    missing = [kw for kw, value in identifiers.items() if not value]
    if missing:
        raise MissingIdentifier(f"missing {', '.join(missing)}")
    identifiers["SeriesInstanceUID"] = _text(ds, "SeriesInstanceUID")
    broken = [f"{kw} ({len(value)} characters)" for kw, value in identifiers.items()
              if len(value) > UID_MAX_LENGTH or not value.isprintable()]
    if broken:
        raise InvalidIdentifier(f"UID over {UID_MAX_LENGTH} characters or with control characters: "
                                f"{', '.join(broken)}")
    file_meta = getattr(ds, "file_meta", None)
    syntax = transfer_syntax_uid or (str(file_meta.get("TransferSyntaxUID", "")) if file_meta else "")
    return InstanceHeader(
        sop_instance_uid=identifiers["SOPInstanceUID"],
        sop_class_uid=identifiers["SOPClassUID"],
        study_instance_uid=identifiers["StudyInstanceUID"],
        series_instance_uid=identifiers["SeriesInstanceUID"],
        transfer_syntax_uid=syntax,
        modality=_text(ds, "Modality"),
        patient_name=_text(ds, "PatientName"),
        patient_id=_text(ds, "PatientID"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_study_date(ds),
        study_description=_text(ds, "StudyDescription"),
        body_part=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        patient_age_years=patient_age_years(ds),
        patient_sex=patient_sex(ds),
        institution=_text(ds, "InstitutionName"),
        station=_text(ds, "StationName"),
        priority=order_priority(ds),
    )

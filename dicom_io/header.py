"""The few header attributes the product records about a received instance (read without touching pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from pydicom.dataset import Dataset


class MissingIdentifier(ValueError):
    """The dataset lacks a UID the product needs to file it (study, series or instance)."""


class InvalidIdentifier(ValueError):
    """A UID breaks DICOM's rules (over 64 characters, or control characters): no retry can ever file it."""


UID_MAX_LENGTH = 64  # PS3.5 §9.1


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


def _text(ds: Dataset, keyword: str) -> str:
    """The value as text, NUL characters dropped (padding from broken writers; no database can store them)."""
    value = ds.get(keyword)
    return "" if value is None else str(value).replace("\x00", "").strip()


def _study_date(ds: Dataset) -> date | None:
    raw = _text(ds, "StudyDate")
    try:
        return datetime.strptime(raw[:8], "%Y%m%d").date() if raw else None
    except ValueError:
        return None


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
    )

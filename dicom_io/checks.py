"""Is this instance a frontal chest radiograph the model may score? Decided from the header alone."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from dicom_io.reasons import Reason
from dicom_io.sop_classes import RADIOGRAPH_SOP_CLASSES, SECONDARY_CAPTURE_SOP_CLASSES

CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "CXR", "TORAX", "POUMON", "BRUST")
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}
FRONTAL_VIEWS = {"PA", "AP"}


@dataclass(frozen=True)
class Assessment:
    """The decision, its reason code when negative, and what had to be assumed for want of tags."""

    analysable: bool
    reason: Reason | None = None
    assumptions: tuple[str, ...] = field(default_factory=tuple)


def _texts(ds: Dataset, *keywords: str) -> str:
    return " ".join(str(ds.get(kw, "")) for kw in keywords).upper()


def _code_meanings(ds: Dataset, keyword: str) -> str:
    return " ".join(str(item.get("CodeMeaning", "")) for item in ds.get(keyword, []) or []).upper()


def assess(ds: Dataset) -> Assessment:
    """Decide analysability from SOP class, pixel presence, frames, body part and view."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in RADIOGRAPH_SOP_CLASSES + SECONDARY_CAPTURE_SOP_CLASSES:
        return Assessment(False, Reason.UNSUPPORTED_SOP_CLASS)
    if "PixelData" not in ds:
        return Assessment(False, Reason.NO_PIXEL_DATA)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return Assessment(False, Reason.MULTIFRAME)

    assumptions: list[str] = []
    body_part = str(ds.get("BodyPartExamined", "")).strip().upper()
    described = _texts(ds, "StudyDescription", "SeriesDescription", "ProtocolName")
    described += " " + _code_meanings(ds, "AnatomicRegionSequence")
    if body_part:
        if not any(word in body_part for word in CHEST_WORDS):
            return Assessment(False, Reason.NOT_CHEST)
    elif not any(word in described for word in CHEST_WORDS):
        assumptions.append("body part assumed chest")

    view = str(ds.get("ViewPosition", "")).strip().upper()
    view_codes = _code_meanings(ds, "ViewCodeSequence")
    if view in LATERAL_VIEWS or "LATERAL" in view_codes:
        return Assessment(False, Reason.LATERAL_VIEW)
    if view not in FRONTAL_VIEWS and not any(w in view_codes for w in ("POSTERO-ANTERIOR", "ANTERO-POSTERIOR")):
        assumptions.append("view assumed frontal")
    return Assessment(True, None, tuple(assumptions))

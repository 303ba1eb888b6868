"""Why an instance was not scored: one set of stable codes, stored with the instance, returned by the API, shown on
the worklist (their words live in ``worklist.presentation.REASON_TEXT``) and written into the SR and the HL7 result.
A ``StrEnum``, so a code is its own string wherever it is stored or compared."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # Decided from the file: readable, but not something the model may score (NOT_ANALYSED) ...
    LATERAL_VIEW = "LATERAL_VIEW"
    NOT_CHEST = "NOT_CHEST"
    MULTIFRAME = "MULTIFRAME"
    UNSUPPORTED_SOP_CLASS = "UNSUPPORTED_SOP_CLASS"
    BLANK_IMAGE = "BLANK_IMAGE"
    # ... or no usable pixels (FAILED).
    NO_PIXEL_DATA = "NO_PIXEL_DATA"
    UNREADABLE_PIXEL_DATA = "UNREADABLE_PIXEL_DATA"
    # Decided by the worker (FAILED, the dead-letter record).
    SPOOL_FILE_MISSING = "SPOOL_FILE_MISSING"
    UNREADABLE_DICOM = "UNREADABLE_DICOM"
    TOO_MANY_ATTEMPTS = "TOO_MANY_ATTEMPTS"
    INTERNAL_ERROR = "INTERNAL_ERROR"


#: Codes that mean the instance has no usable pixels (FAILED), as opposed to "readable, but not for the model".
NO_USABLE_PIXELS = frozenset({Reason.NO_PIXEL_DATA, Reason.UNREADABLE_PIXEL_DATA})

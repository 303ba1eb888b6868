"""How values read on screen (and in the CLI): scores, durations, times, statuses, reasons."""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from functools import partial
from typing import Any

TRIAGE_NOTICE = "Triage support only — not a diagnosis. Every study must still be read by a radiologist."
UNTRAINED_NOTICE = "UNTRAINED MODEL — scores are meaningless"

# The reason codes that dicom_io and the worker record, in words (the code is always shown too).
REASON_TEXT = {
    "LATERAL_VIEW": "lateral view",
    "NOT_CHEST": "not a chest image",
    "MULTIFRAME": "multi-frame image",
    "NO_PIXEL_DATA": "no pixel data",
    "UNREADABLE_PIXEL_DATA": "unreadable pixel data",
    "UNSUPPORTED_SOP_CLASS": "not a radiograph",
    "BLANK_IMAGE": "blank or constant image",
    "SPOOL_FILE_MISSING": "file missing from the spool",
    "UNREADABLE_DICOM": "unreadable DICOM file",
    "TOO_MANY_ATTEMPTS": "gave up after repeated attempts",
    "INTERNAL_ERROR": "internal error",
}

STATE_LABEL = {"pending": "pending", "done": "done", "not_analysed": "not analysed", "failed": "failed"}


def person_name(value: str | None) -> str:
    """A DICOM PN ("SMITH^MARIA^^DR") as people read it: "SMITH, DR MARIA". The case is kept as stored (a family
    name in capitals is how many sites write it); empty components are skipped; the "=" groups (alphabetic,
    ideographic, phonetic) that are not empty are all shown, joined by " = ", so nothing stored is hidden."""
    shown = [_name_group(group) for group in (value or "").split("=")]
    return " = ".join(group for group in shown if group)


def _name_group(group: str) -> str:
    """One PN component group: family^given^middle^prefix^suffix."""
    family, given, middle, prefix, suffix = ([part.strip() for part in group.split("^")] + [""] * 5)[:5]
    rest = " ".join(part for part in (prefix, given, middle, suffix) if part)
    if family and rest:
        return f"{family}, {rest}"
    return family or rest


def reason_text(code: str | None) -> str:
    return REASON_TEXT.get(code or "", "")


def status_text(state: str, reason: str | None) -> str:
    """``not analysed: LATERAL_VIEW`` — the code, which support staff search for; the words come beside it."""
    label = STATE_LABEL.get(state, state.lower())
    if state in ("not_analysed", "failed"):
        return f"{label}: {reason or 'UNKNOWN'}"
    return label


def score(value: float | None) -> str:
    if value is None:
        return "—"
    if 0 < value < 0.001:
        return "<0.001"
    if 0.999 < value < 1:
        return ">0.999"
    return f"{value:.3f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def local_time(value: datetime | str | None, zone: tzinfo = timezone.utc) -> str:
    """A stored (UTC) time as the site's wall clock reads it; naive values are UTC."""
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def iso(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def jinja_filters(zone: tzinfo = timezone.utc) -> dict[str, Any]:
    return {"score": score, "duration": duration, "local": partial(local_time, zone=zone), "iso": iso,
            "reason_text": reason_text}

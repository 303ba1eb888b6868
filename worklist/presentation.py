"""How values read on screen (and in the CLI): scores, durations, times, statuses, reasons."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from functools import partial
from typing import Any
from urllib.parse import quote

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


def retention_notice(days: int) -> str:
    """What a purged image's place says, on the page and in the API's 410 (TRIAGE_RETENTION_DAYS; 0 = the images were
    removed by a one-off ``cxr-triage purge --days N`` while no retention is set)."""
    after = f" after {days} day{'s' if days != 1 else ''}" if days > 0 else ""
    return f"The images were removed by the retention policy{after}."


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


SEX_WORDS = {"F": "female", "M": "male", "O": "other"}
# The placeholders TRIAGE_VIEWER_URL may hold, each replaced by the study's value, URL-encoded.
VIEWER_PLACEHOLDERS = ("study_uid", "accession", "patient_id")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def check_viewer_template(template: str) -> str:
    """TRIAGE_VIEWER_URL as given, stripped; raises ValueError unless it is empty or an http(s) URL whose only
    ``{…}`` placeholders are {study_uid}, {accession} and {patient_id} (a ``javascript:`` link must never reach a
    page)."""
    template = template.strip()
    if not template:
        return ""
    if not re.match(r"^https?://[^/?#{}\s]+", template, re.IGNORECASE) or any(c.isspace() for c in template):
        raise ValueError("the viewer URL must be an http(s) URL without spaces, e.g. "
                         "https://pacs.example/viewer?StudyInstanceUIDs={study_uid}")
    unknown = sorted({name for name in _PLACEHOLDER.findall(template) if name not in VIEWER_PLACEHOLDERS})
    if unknown:
        raise ValueError(f"unknown placeholder(s) in the viewer URL: {', '.join('{' + n + '}' for n in unknown)} "
                         f"(known: {', '.join('{' + n + '}' for n in VIEWER_PLACEHOLDERS)})")
    return template


def viewer_url(template: str, study_uid: str, accession: str | None = None, patient_id: str | None = None
               ) -> str | None:
    """The study in the site's image viewer (TRIAGE_VIEWER_URL): each placeholder replaced, in one pass, by its
    value URL-encoded (``/``, ``&``, ``#`` and ``{`` included, so a value can neither end the parameter nor add a
    placeholder); None when no viewer is configured."""
    if not template or not template.strip():
        return None
    values = {"study_uid": study_uid, "accession": accession or "", "patient_id": patient_id or ""}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        return quote(values[name], safe="") if name in values else match.group(0)

    return _PLACEHOLDER.sub(fill, template.strip())


def age_sex(age_years: int | None, sex: str | None) -> str:
    """``45 F`` (age in whole years, then sex); ``—`` when neither is known."""
    parts = [str(age_years) if age_years is not None else "", sex or ""]
    return " ".join(part for part in parts if part) or "—"


def age_sex_words(age_years: int | None, sex: str | None) -> str:
    """The same in words, for a tooltip and screen readers: ``45 years, female``."""
    age = f"{age_years} year{'' if age_years == 1 else 's'}" if age_years is not None else "age unknown"
    return f"{age}, {SEX_WORDS.get(sex or '', 'sex unknown')}"


def waiting(seconds: float | None) -> str:
    """How long an unread study has waited, as a reader glances at it: ``<1 min``, ``12 min``, ``2 h 05 min``,
    ``3 d 4 h``; empty once read (None). worklist.js counts on with the same words."""
    if seconds is None:
        return ""
    minutes = int(max(0.0, seconds) // 60)
    if minutes < 1:
        return "<1 min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


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


def local_time(value: datetime | str | None, zone: tzinfo = UTC) -> str:
    """A stored (UTC) time as the site's wall clock reads it; naive values are UTC."""
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def iso(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def jinja_filters(zone: tzinfo = UTC) -> dict[str, Any]:
    return {"score": score, "duration": duration, "local": partial(local_time, zone=zone), "iso": iso,
            "reason_text": reason_text, "person": person_name, "waiting": waiting}

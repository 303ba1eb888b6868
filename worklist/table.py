"""The worklist as a terminal table (``cxr-triage worklist`` and the demo): the same words as the page."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from db.worklist import WorklistEntry, WorklistSort
from worklist.presentation import (
    TRIAGE_NOTICE,
    UNTRAINED_NOTICE,
    duration,
    local_time,
    person_name,
    reason_text,
    score,
    status_text,
)

SORT_TITLES = {
    WorklistSort.PRIORITY: "unread flagged first (STAT, then newest flag), then unread others (STAT, then "
                           "arrival order); read studies last",
    WorklistSort.FLAGGED_SCORE: "flagged first by score, then arrival order; read studies last in each group",
}


def _flag_cell(entry: WorklistEntry) -> str:
    if entry.flag:
        return "[bold white on red]FLAGGED[/]"
    if entry.score is None:
        return "—"
    return "not flagged (borderline)" if entry.borderline else "not flagged"


def _context_cell(entry: WorklistEntry) -> str:
    """Age/sex, priority, modality: "67 y F, STAT, CR"; "outside validated population" when the model says so."""
    age = f"{entry.patient_age_years} y" if entry.patient_age_years is not None else "age ?"
    parts = [f"{age} {entry.patient_sex or '?'}", entry.priority or "", entry.modality or ""]
    text = ", ".join(part for part in parts if part)
    return text + ("; outside validated population" if entry.outside_validated_population else "")


def print_worklist(console: Console, entries: list[WorklistEntry], untrained: bool, timezone: str = "UTC",
                   sort: WorklistSort = WorklistSort.PRIORITY) -> None:
    if untrained:
        console.print(f"[bold white on red] {UNTRAINED_NOTICE} [/]")
    table = Table(title=f"Worklist ({SORT_TITLES.get(sort, 'sorted by ' + sort.value)})", caption=TRIAGE_NOTICE)
    received = f"received ({timezone})"
    keep_whole = {"flag", "score", "images", received, "to result", "model"}
    for column in ("flag", "score", "status", "patient", "context", "accession", "description", "images", received,
                   "to result", "model", "read"):
        table.add_column(column, no_wrap=column in keep_whole, overflow="fold",
                         max_width=None if column in keep_whole else 28)
    for e in entries:
        status = status_text(e.state, e.reason)
        if reason_text(e.reason):
            status += f" ({reason_text(e.reason)})"
        # Every value that came from a file or a user is escaped: header text such as "[/]" is not rich markup.
        table.add_row(
            _flag_cell(e),
            score(e.score),
            escape(status),
            escape(f"{person_name(e.patient_name)} ({e.patient_id})"),
            escape(_context_cell(e)),
            escape(e.accession_number or ""),
            escape(e.study_description or ""),
            str(e.images),
            local_time(e.received_at, ZoneInfo(timezone)),
            duration(e.time_to_flag_s),
            escape((e.model_version or "") + (" (untrained)" if e.model_trained is False else "")),
            escape(f"read by {e.read_by}") if e.read else "unread",
        )
    console.print(table)

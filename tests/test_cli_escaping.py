"""Header text printed by the CLI is text, never rich markup: a PatientName such as ``[/]X`` must not crash the
worklist, and ``[link=…]`` must not become a link."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from db.worklist import WorklistEntry


def _entry(name: str) -> WorklistEntry:
    return WorklistEntry(
        study_uid="1.2.3", patient_name=name, patient_id="[bold]ID[/bold]", accession_number="[/]A1",
        study_date=None, study_description="[link=https://attacker.example]XR CHEST[/link]", status="DONE",
        flag=True, score=0.9, threshold=0.5, reason=None, model_version="m[/]1", model_sha256="a" * 64,
        model_trained=True, received_at=datetime(2026, 11, 30, 8, tzinfo=UTC), flagged_at=None, images=1,
        state="done", failed_images=0, time_to_flag_s=None, read_at=None, read_by=None)


def _column(table_text: str, name: str) -> str:
    """One column's text, its cells' folded lines joined (a long value folds over lines between the borders)."""
    rows = [line.split("│") for line in table_text.splitlines() if line.startswith("│")]
    header = next(line.split("┃") for line in table_text.splitlines() if line.startswith("┃"))
    index = [cell.strip() for cell in header].index(name)
    return "".join(row[index].strip() for row in rows)


def test_worklist_table_prints_markup_in_header_text_literally() -> None:
    from worklist.table import print_worklist

    recorder = Console(record=True, width=400, force_terminal=True)
    print_worklist(recorder, [_entry("[/]X^EVIL"), _entry("[link=https://attacker.example]SMITH[/link]")], False)
    text = recorder.export_text()
    assert "[/]X, EVIL" in text and "[bold]ID[/bold]" in text and "[/]A1" in text and "m[/]1" in text
    assert "[link=" in text and "SMITH[/link]" in _column(text, "patient")
    assert "href=" not in recorder.export_html()  # no value became a link

"""The ``cxr-triage`` command line: run the parts (together or alone), read the worklist, backfill files,
purge expired pixels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from db.worklist import OrderPriority, PatientSex, WorklistFilter, WorklistSort, WorklistStatus
from triage.console import app, command_settings, console, wait_for_stop
from triage.supervisor import WorkerSupervisor
from triage.web_server import web_server
from triage.wiring import listener_config, reporting_config, settings_env, worker_config
from worklist.table import print_worklist


@app.command()
def serve() -> None:
    """Listener, worker and web page together (the single-machine form)."""
    from worker.ingest_service import IngestService

    settings = command_settings()
    ingest = IngestService(worker_config(settings), listener_config(settings), reporting_config(settings))
    ingest.start()
    worker = WorkerSupervisor(settings_env(settings))
    worker.start()
    try:
        console.print(f"worklist at http://{settings.web_host}:{settings.web_port}/  "
                      f"DICOM {settings.dicom_ae_title}@{settings.dicom_host}:{settings.dicom_port}")
        web_server(settings, worker_restarts=lambda: len(worker.restarts)).run()
    finally:
        worker.stop()
        ingest.stop()


@app.command()
def listen() -> None:
    """The DICOM listener and the outbox sweeper (fleet form)."""
    from worker.ingest_service import IngestService

    settings = command_settings()
    ingest = IngestService(worker_config(settings), listener_config(settings), reporting_config(settings))
    ingest.start()
    try:
        wait_for_stop()
    finally:
        ingest.stop()


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="Celery pool: solo (one per GPU), prefork or threads.")] = "solo",
    concurrency: Annotated[int, typer.Option(help="Processes or threads (solo: 1).")] = 1,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues (default: triage).")] = None,
) -> None:
    """A Celery worker that classifies queued instances (fleet form)."""
    from worker.celery_worker import run_worker

    settings = command_settings()
    run_worker(worker_config(settings), pool=pool, concurrency=concurrency, loglevel=settings.log_level,
               queues=queues)


@app.command()
def web() -> None:
    """The worklist web page and REST API (fleet form)."""
    settings = command_settings()
    web_server(settings).run()


@app.command("import")
def import_files(paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")]
                 ) -> None:
    """Backfill DICOM files from disk through the same commit point as a C-STORE."""
    from worker.ingest_service import IngestService

    settings = command_settings()
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()))]
    if not files:
        console.print("[red]no files found[/red]")
        raise typer.Exit(2)
    ingest = IngestService(worker_config(settings))
    try:
        committed = sum(ingest.import_file(path) is not None for path in files)
    finally:
        ingest.stop()
    console.print(f"committed {committed} of {len(files)} file(s)")
    if committed < len(files):
        raise typer.Exit(1)


@app.command()
def purge(
    days: Annotated[int | None, typer.Option(min=1, help="Delete the pixels of read studies processed more than this "
                                                         "many days ago (default: TRIAGE_RETENTION_DAYS).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
) -> None:
    """Delete the stored pixels (spooled DICOM copy, preview, heat map, full-size PNG) of read studies past the
    retention; rows, results and the audit trail stay. The listener does this hourly when TRIAGE_RETENTION_DAYS is
    set."""
    from dataclasses import replace

    from db.engine import open_database
    from worker.retention import purge_expired

    settings = command_settings()
    config = worker_config(settings)
    if days is None and config.retention_days <= 0:
        console.print("retention is off (TRIAGE_RETENTION_DAYS=0): every image is kept; nothing was deleted. "
                      "Set TRIAGE_RETENTION_DAYS or give --days N.")
        return
    if days is not None:
        config = replace(config, retention_days=days)
    engine, sessions = open_database(config.database_url)
    try:
        report = purge_expired(sessions, config, dry_run=dry_run, keep_report_due=reporting_config(settings).enabled)
    finally:
        engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{'dry run: ' if dry_run else ''}{report.instances} instance(s) of read studies processed over "
                  f"{report.days} day(s) ago: {verb} {report.files_removed} file(s), "
                  f"{report.bytes_freed / 1e6:.1f} MB ({report.bytes_freed} bytes); "
                  f"{report.files_not_removed} file(s) {'would be ' if dry_run else ''}kept (see the log)")
    if report.resumed or report.left_pending:  # a crash or an undeletable file left an earlier pass unfinished
        console.print(f"{report.resumed} instance(s) left pending by an earlier pass {'would be ' if dry_run else ''}"
                      f"taken up; {report.left_pending} instance(s) {'would be ' if dry_run else ''}left pending for "
                      f"the next pass (a file could not be deleted)")


@app.command("worklist")
def show_worklist(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    status: Annotated[str | None, typer.Option(
        help="PENDING, DONE, NOT_ANALYSED (includes FAILED) or FAILED.")] = None,
    flagged: Annotated[bool, typer.Option("--flagged", help="Only flagged studies.")] = False,
    unread: Annotated[bool, typer.Option("--unread", help="Only studies nobody has marked read.")] = False,
    search: Annotated[str | None, typer.Option(help="Words to find in patient name, ID or accession.")] = None,
    modality: Annotated[str | None, typer.Option(help="Only this modality (CR, DX…).")] = None,
    sex: Annotated[PatientSex | None, typer.Option(help="Only this patient sex.")] = None,
    priority: Annotated[OrderPriority | None, typer.Option(help="Only this order priority.")] = None,
    age_min: Annotated[int | None, typer.Option(min=0, help="Patient at least this old (years).")] = None,
    age_max: Annotated[int | None, typer.Option(min=0, help="Patient at most this old (years).")] = None,
    institution: Annotated[str | None, typer.Option(help="Text in the institution name.")] = None,
    sort: Annotated[WorklistSort, typer.Option(
        help="priority: unread flagged (STAT, then newest flag first), unread others (STAT, then arrival), read "
             "last; flagged_score: flagged first by score.")] = WorklistSort.PRIORITY,
    limit: Annotated[int, typer.Option(help="At most this many studies.")] = 200,
) -> None:
    """Print the prioritized worklist (the same order and fields as the page and GET /api/worklist)."""
    from db.engine import open_database
    from db.model_registry import untrained_models_in_use
    from db.worklist import worklist
    from worklist.views import worklist_item

    if status is not None and status.upper() not in WorklistStatus.__members__:
        raise typer.BadParameter(f"{status!r} is not one of {', '.join(WorklistStatus.__members__)}",
                                 param_hint="--status")
    settings = command_settings()
    filters = WorklistFilter(
        status=status, flagged=True if flagged else None, read=False if unread else None, text=search,
        modality=modality, sex=sex.value if sex else None, priority=priority.value if priority else None,
        age_min=age_min, age_max=age_max, institution=institution)
    engine, sessions = open_database(settings.effective_database_url)
    with sessions() as session:
        entries = worklist(session, filters, sort=sort, limit=limit, borderline_band=settings.borderline_band)
        untrained = untrained_models_in_use(session)
    engine.dispose()
    if as_json:  # each study as GET /api/worklist gives it
        items = [worklist_item(entry, settings.viewer_url).model_dump(mode="json") for entry in entries]
        print(json.dumps(items, indent=2))
        return
    print_worklist(console, entries, untrained, settings.timezone, sort)


@app.command()
def inspect(
    files: Annotated[list[Path], typer.Argument(help="DICOM files to inspect.")],
    png: Annotated[Path | None, typer.Option("--png", help="Write <stem>.display.png and <stem>.input.png here.")
                   ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file, one per line.")] = False,
) -> None:
    """Show the decision, reason, encoding and window for each file, and optionally what the model sees."""
    from model.checkpoint import read_metadata
    from triage.inspect import inspect_file
    from worker.served_model import checkpoint_path

    spec = read_metadata(checkpoint_path(worker_config(command_settings()))).preprocess_spec
    for path in files:
        result = inspect_file(path, spec, png)
        if as_json:
            print(json.dumps(result.to_dict()))
            continue
        decision = "analysable" if result.analysable else f"not analysed: {result.reason}"
        console.print(f"[bold]{escape(str(path))}[/]: {escape(decision)}")
        console.print(escape(f"  {result.transfer_syntax}; {result.photometric}; bits {result.bits_stored}/"
                             f"{result.bits_allocated}, {'signed' if result.pixel_representation else 'unsigned'}; "
                             f"{result.rows}×{result.columns}; window: {result.window}"))
        for line in ([result.detail] if result.detail else []) + result.notes:
            console.print(f"  note: {escape(line)}")
        if result.input_png:
            console.print(escape(f"  wrote {result.display_png} and {result.input_png}"))


@app.command()
def demo(
    once: Annotated[bool, typer.Option("--once", help="Exit after printing the worklist.")] = False,
    source: Annotated[Path | None, typer.Option(help="Folder of DICOM files to send.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all results.")] = 600.0,
) -> None:
    """Start everything, send chest X-rays over DICOM, wait for the results, show the worklist."""
    from triage.demo import run_demo

    raise typer.Exit(run_demo(command_settings(), once=once, source=source, timeout=timeout))

"""The ``cxr-triage`` command line: run the parts (together or alone), read the worklist, backfill files."""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from db import queries
from triage.runtime import (
    DropQueryStrings,
    configure_logging,
    listener_config,
    reporting_config,
    settings_env,
    worker_config,
)
from triage.settings import Settings
from triage.supervisor import WorkerSupervisor

app = typer.Typer(help="cxr-triage: reads every incoming chest X-ray first (triage support, not a diagnosis).",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
console = Console(width=None if sys.stdout.isatty() else 160)  # tables stay readable in logs


def load_settings() -> Settings:
    """Settings from the environment and .env; a bad value ends the command naming its variable, not a traceback."""
    try:
        return Settings()
    except ValidationError as error:
        for problem in error.errors():
            name = "TRIAGE_" + "_".join(str(part) for part in problem["loc"]).upper()
            console.print(f"[red]{name}: {problem['msg']}[/red]")
        raise typer.Exit(2) from None


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level)
    settings.ensure_dirs()
    return settings


def _wait_for_stop() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def web_server(settings: Settings, worker_restarts: Callable[[], int] | None = None) -> uvicorn.Server:
    """The worklist server; refuses to leave loopback without an API token (the page shows patient data)."""
    from dicom_io.spool import disk_used_percent
    from triage.broker_check import broker_check
    from worklist.app import create_app

    if not (settings.api_token or settings.api_tokens) and not _is_loopback(settings.web_host):
        console.print(f"[red]TRIAGE_WEB_HOST={settings.web_host} is not loopback: set TRIAGE_API_TOKEN first[/red]")
        raise typer.Exit(2)
    app_ = create_app(settings.effective_database_url, api_token=settings.api_token,
                      api_tokens=settings.api_tokens, timezone=settings.timezone,
                      spool_disk_used=lambda: disk_used_percent(settings.spool_dir),
                      disk_watermark_percent=settings.disk_watermark_percent, worker_restarts=worker_restarts,
                      broker_ok=broker_check(worker_config(settings)),
                      borderline_band=settings.borderline_band, viewer_url_template=settings.viewer_url)
    config = uvicorn.Config(app_, host=settings.web_host, port=settings.web_port, log_level=settings.log_level.lower(),
                            ssl_certfile=settings.web_tls_cert, ssl_keyfile=settings.web_tls_key)
    logging.getLogger("uvicorn.access").addFilter(DropQueryStrings())  # uvicorn's Config reconfigured its loggers
    return uvicorn.Server(config)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@app.command()
def serve() -> None:
    """Listener, worker and web page together (the single-machine form)."""
    from worker.services import IngestService

    settings = _settings()
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
    from worker.services import IngestService

    settings = _settings()
    ingest = IngestService(worker_config(settings), listener_config(settings), reporting_config(settings))
    ingest.start()
    try:
        _wait_for_stop()
    finally:
        ingest.stop()


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="Celery pool: solo (one per GPU), prefork or threads.")] = "solo",
    concurrency: Annotated[int, typer.Option(help="Processes or threads (solo: 1).")] = 1,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues (default: triage).")] = None,
) -> None:
    """A Celery worker that classifies queued instances (fleet form)."""
    from worker.services import run_worker

    settings = _settings()
    run_worker(worker_config(settings), pool=pool, concurrency=concurrency, loglevel=settings.log_level,
               queues=queues)


@app.command()
def web() -> None:
    """The worklist web page and REST API (fleet form)."""
    settings = _settings()
    web_server(settings).run()


@app.command("import")
def import_files(paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")]
                 ) -> None:
    """Backfill DICOM files from disk through the same commit point as a C-STORE."""
    from worker.services import IngestService

    settings = _settings()
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


@app.command("worklist")
def show_worklist(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    status: Annotated[str | None, typer.Option(
        help="PENDING, DONE, NOT_ANALYSED (includes FAILED) or FAILED.")] = None,
    flagged: Annotated[bool, typer.Option("--flagged", help="Only flagged studies.")] = False,
    unread: Annotated[bool, typer.Option("--unread", help="Only studies nobody has marked read.")] = False,
    search: Annotated[str | None, typer.Option(help="Words to find in patient name, ID or accession.")] = None,
    modality: Annotated[str | None, typer.Option(help="Only this modality (CR, DX…).")] = None,
    sex: Annotated[queries.PatientSex | None, typer.Option(help="Only this patient sex.")] = None,
    priority: Annotated[queries.OrderPriority | None, typer.Option(help="Only this order priority.")] = None,
    age_min: Annotated[int | None, typer.Option(min=0, help="Patient at least this old (years).")] = None,
    age_max: Annotated[int | None, typer.Option(min=0, help="Patient at most this old (years).")] = None,
    institution: Annotated[str | None, typer.Option(help="Text in the institution name.")] = None,
    sort: Annotated[queries.WorklistSort, typer.Option(
        help="priority: unread flagged (STAT, then newest flag first), unread others (STAT, then arrival), read "
             "last; flagged_score: flagged first by score.")] = queries.WorklistSort.PRIORITY,
    limit: Annotated[int, typer.Option(help="At most this many studies.")] = 200,
) -> None:
    """Print the prioritized worklist (the same order and fields as the page and GET /api/worklist)."""
    from db.engine import open_database

    if status is not None and status.upper() not in queries.WorklistStatus.__members__:
        raise typer.BadParameter(f"{status!r} is not one of {', '.join(queries.WorklistStatus.__members__)}",
                                 param_hint="--status")
    settings = _settings()
    filters = queries.WorklistFilter(
        status=status, flagged=True if flagged else None, read=False if unread else None, text=search,
        modality=modality, sex=sex.value if sex else None, priority=priority.value if priority else None,
        age_min=age_min, age_max=age_max, institution=institution)
    engine, sessions = open_database(settings.effective_database_url)
    with sessions() as session:
        entries = queries.worklist(session, filters, sort=sort, limit=limit,
                                   borderline_band=settings.borderline_band)
        untrained = queries.untrained_models_in_use(session)
    engine.dispose()
    if as_json:
        print(json.dumps([entry.to_dict() for entry in entries], indent=2))
        return
    print_worklist(entries, untrained, settings.timezone, sort)


SORT_TITLES = {
    queries.WorklistSort.PRIORITY: "unread flagged first (STAT, then newest flag), then unread others (STAT, then "
                                   "arrival order); read studies last",
    queries.WorklistSort.FLAGGED_SCORE: "flagged first by score, then arrival order; read studies last in each group",
}


def _flag_cell(entry: queries.WorklistEntry) -> str:
    if entry.flag:
        return "[bold white on red]FLAGGED[/]"
    if entry.score is None:
        return "—"
    return "not flagged (borderline)" if entry.borderline else "not flagged"


def _context_cell(entry: queries.WorklistEntry) -> str:
    """Age/sex, priority, modality: "67 y F, STAT, CR"; "outside validated population" when the model says so."""
    age = f"{entry.patient_age_years} y" if entry.patient_age_years is not None else "age ?"
    parts = [f"{age} {entry.patient_sex or '?'}", entry.priority or "", entry.modality or ""]
    text = ", ".join(part for part in parts if part)
    return text + ("; outside validated population" if entry.outside_validated_population else "")


def print_worklist(entries: list[queries.WorklistEntry], untrained: bool, timezone: str = "UTC",
                   sort: queries.WorklistSort = queries.WorklistSort.PRIORITY) -> None:
    from zoneinfo import ZoneInfo

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

    if untrained:
        console.print(f"[bold white on red] {UNTRAINED_NOTICE} [/]")
    table = Table(title=f"Worklist ({SORT_TITLES.get(sort, 'sorted by ' + sort.value)})", caption=TRIAGE_NOTICE)
    received = f"received ({timezone})"
    keep_whole = {"flag", "score", "images", received, "to flag", "model"}
    for column in ("flag", "score", "status", "patient", "context", "accession", "description", "images", received,
                   "to flag", "model", "read"):
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
    from worker.pipeline import checkpoint_path

    spec = read_metadata(checkpoint_path(worker_config(_settings()))).preprocess_spec
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

    raise typer.Exit(run_demo(_settings(), once=once, source=source, timeout=timeout))


from triage import training_cli  # noqa: E402

training_cli.register(app)


if __name__ == "__main__":
    app()

"""The one Typer app of the ``cxr-triage`` command, its console, and how a command loads the settings.

Command modules (``triage.cli``, ``triage.training_cli``) import from here and register their commands on ``app``;
``triage.main`` imports them all, so nothing here imports a command module.
"""

from __future__ import annotations

import signal
import sys
import threading

import typer
from pydantic import ValidationError
from rich.console import Console

from triage.settings import Settings
from triage.wiring import configure_logging

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


def command_settings() -> Settings:
    """Settings, logging configured and the data folders made: what a long-running command starts with."""
    settings = load_settings()
    configure_logging(settings.log_level)
    settings.ensure_dirs()
    return settings


def wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()

"""The worklist web server as the CLI runs it: the app with its checks wired in, refusing to leave loopback without
a token (the page shows patient data)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import typer
import uvicorn

from triage.console import console
from triage.settings import Settings
from triage.wiring import DropQueryStrings, package_version, worker_config


def model_card_path() -> Path:
    """The model card ships inside the model package (read as package data, without importing torch)."""
    return Path(str(resources.files("model") / "MODEL_CARD.md"))


def web_server(settings: Settings, worker_restarts: Callable[[], int] | None = None) -> uvicorn.Server:
    """The worklist server; refuses to leave loopback without an API token (the page shows patient data)."""
    from dicom_io.spool import disk_used_percent
    from triage.broker_check import broker_check
    from worklist.app import create_app

    if not (settings.api_token or settings.api_tokens) and not _is_loopback(settings.web_host):
        console.print(f"[red]TRIAGE_WEB_HOST={settings.web_host} is not loopback: set TRIAGE_API_TOKEN first[/red]")
        raise typer.Exit(2)
    app_ = create_app(settings.effective_database_url, api_token=settings.api_token, model_card=model_card_path(),
                      api_tokens=settings.api_tokens, timezone=settings.timezone,
                      spool_disk_used=lambda: disk_used_percent(settings.spool_dir),
                      disk_watermark_percent=settings.disk_watermark_percent, worker_restarts=worker_restarts,
                      broker_ok=broker_check(worker_config(settings)),
                      borderline_band=settings.borderline_band, viewer_url_template=settings.viewer_url,
                      software_version=package_version(), retention_days=settings.retention_days)
    config = uvicorn.Config(app_, host=settings.web_host, port=settings.web_port, log_level=settings.log_level.lower(),
                            ssl_certfile=settings.web_tls_cert, ssl_keyfile=settings.web_tls_key)
    logging.getLogger("uvicorn.access").addFilter(DropQueryStrings())  # uvicorn's Config reconfigured its loggers
    return uvicorn.Server(config)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

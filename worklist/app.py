"""FastAPI app: the prioritized worklist as a page and a REST API; every view says it is triage support.

Routes (``/docs`` shows the API): the page ``/``, ``/studies/{uid}``, ``/model``; the API under ``/api``;
``/healthz``; ``/metrics`` (Prometheus). With tokens configured, everything but ``/healthz``, ``/login`` and
``/static`` needs ``Authorization: Bearer <token>`` or the session cookie that ``/login`` sets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from db.engine import open_database
from db.worklist import DEFAULT_BORDERLINE_BAND
from worklist import api, docs, metrics, openapi, operations, pages, problems
from worklist.auth import Tokens, parse_tokens
from worklist.presentation import TRIAGE_NOTICE, UNTRAINED_NOTICE, check_viewer_template, jinja_filters

HERE = Path(__file__).parent
# Pages may load only what this server serves; nothing may frame them (the read/unread buttons).
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

__all__ = ["create_app", "TRIAGE_NOTICE", "UNTRAINED_NOTICE"]


LOOPBACK_HOST_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback_host(host_header: str) -> bool:
    """``localhost:8000``, ``127.0.0.1``, ``[::1]:8000`` → True; any other name or address → False."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in LOOPBACK_HOST_NAMES


def create_app(database_url: str, api_token: str = "", *, api_tokens: str = "", poll_interval_s: float = 2.0,
               model_card: Path | None = None, timezone: str = "UTC",
               spool_disk_used: Callable[[], float] | None = None, disk_watermark_percent: float = 90.0,
               worker_restarts: Callable[[], int] | None = None, broker_ok: Callable[[], bool] | None = None,
               borderline_band: float = DEFAULT_BORDERLINE_BAND, viewer_url_template: str = "",
               software_version: str = "unknown", retention_days: int = 0) -> FastAPI:
    """The app. ``api_token`` (one token, named "api-token" in the audit) and ``api_tokens``
    (``name=token,...``) switch authentication on; without either, callers are "loopback-demo" and the server
    must only listen on loopback (``triage.cli.web_server`` enforces that). ``timezone`` (IANA) is the site's:
    the page shows times in it and the date filters of page and API count its days. With ``spool_disk_used``
    (percent of the spool's disk in use, from the composition root), /healthz and /metrics also report it against
    ``disk_watermark_percent``; ``worker_restarts`` (single-machine form) counts the worker's restarts;
    ``broker_ok`` (a quick, bounded connect to the Celery broker) makes /healthz and /metrics report the broker.
    ``viewer_url_template`` (TRIAGE_VIEWER_URL, placeholders {study_uid}, {accession}, {patient_id}) links every
    study to the site's image viewer; empty = no viewer links. ``software_version`` (the installed package's, from
    the composition root) is what /metrics reports as the build. ``retention_days`` (TRIAGE_RETENTION_DAYS) is what
    a purged image's 410 and the study page say its pictures were kept for."""
    engine, sessions = open_database(database_url)
    app = FastAPI(
        title="cxr-triage worklist",
        version="0.2.0",
        description=f"{TRIAGE_NOTICE}\n\nErrors are RFC 9457 problem details (application/problem+json). "
                    "With a token configured every route but /healthz needs `Authorization: Bearer <token>`.",
        docs_url=None, redoc_url=None, openapi_url=None,  # served by worklist.docs, behind the same sign-in
        openapi_tags=openapi.TAGS,
        generate_unique_id_function=lambda route: route.name,  # routes name their operation_id; this is a fallback
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    zone = ZoneInfo(timezone)
    templates.env.filters.update(jinja_filters(zone))
    templates.env.globals["zone_name"] = timezone
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.tokens = Tokens(parse_tokens(api_token, api_tokens))
    app.state.templates = templates
    app.state.poll_interval_s = poll_interval_s
    app.state.zone = zone
    app.state.borderline_band = borderline_band  # TRIAGE_BORDERLINE_BAND: how far below the threshold is borderline
    app.state.viewer_url_template = check_viewer_template(viewer_url_template)  # TRIAGE_VIEWER_URL
    app.state.retention_days = retention_days  # TRIAGE_RETENTION_DAYS: named where purged images were
    app.state.model_card_path = Path(model_card) if model_card is not None else None  # from the composition root
    app.state.probes = operations.Probes(spool_disk_used=spool_disk_used, disk_watermark_percent=disk_watermark_percent,
                                         broker_ok=broker_ok, worker_restarts=worker_restarts)
    app.state.metrics_registry = metrics.make_registry(sessions, spool_disk_used, disk_watermark_percent, broker_ok,
                                                       software_version)
    problems.install(app)

    @app.middleware("http")
    async def loopback_host_only(request: Request, call_next: Any) -> Response:
        """Without a token the server is a loopback demo; a page on another site can still reach it by pointing its
        own name at 127.0.0.1 (DNS rebinding), so the Host header must name loopback too."""
        if not app.state.tokens.enabled and not is_loopback_host(request.headers.get("host", "")):
            return problems.problem_response(
                request, 421, "without an API token this server answers only to a loopback host name "
                              "(localhost, 127.0.0.1, [::1])")
        return await call_next(request)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")  # URLs carry study UIDs
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")  # patient data stays off shared disks
        if response.headers.get("content-type", "").startswith("text/html") and \
                not request.url.path.startswith(("/docs", "/redoc")):
            response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    app.include_router(operations.router)
    app.include_router(api.router)
    app.include_router(pages.router)

    openapi.add_problem_schema(app)
    docs.install(app)  # before /static: it mounts under it
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    return app

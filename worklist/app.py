"""FastAPI app: the prioritized worklist as a page and a REST API; every view says it is triage support.

Routes (``/docs`` shows the API): the page ``/``, ``/studies/{uid}``, ``/model``; the API under ``/api``;
``/healthz``; ``/metrics`` (Prometheus). With tokens configured, everything but ``/healthz``, ``/login`` and
``/static`` needs ``Authorization: Bearer <token>`` or the session cookie that ``/login`` sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import heartbeats
from db.engine import make_engine, make_session_factory, migrate
from worklist import api, metrics, pages, problems, schemas
from worklist.auth import Tokens, identity, parse_tokens
from worklist.deps import db_session
from worklist.presentation import TRIAGE_NOTICE, UNTRAINED_NOTICE, jinja_filters

HERE = Path(__file__).parent
MODEL_CARD = HERE.parent / "model" / "MODEL_CARD.md"  # ships in the model package when there is one
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
               worker_restarts: Callable[[], int] | None = None) -> FastAPI:
    """The app. ``api_token`` (one token, named "api-token" in the audit) and ``api_tokens``
    (``name=token,...``) switch authentication on; without either, callers are "loopback-demo" and the server
    must only listen on loopback (``triage.cli.web_server`` enforces that). ``timezone`` (IANA) is the site's:
    the page shows times in it and the date filters of page and API count its days. With ``spool_disk_used``
    (percent of the spool's disk in use, from the composition root), /healthz and /metrics also report it against
    ``disk_watermark_percent``; ``worker_restarts`` (single-machine form) counts the worker's restarts."""
    engine = make_engine(database_url)
    migrate(engine)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    app = FastAPI(
        title="cxr-triage worklist",
        version="0.2.0",
        description=f"{TRIAGE_NOTICE}\n\nErrors are RFC 9457 problem details (application/problem+json). "
                    "With a token configured every route but /healthz needs `Authorization: Bearer <token>`.",
        docs_url=None, redoc_url=None, openapi_url=None,  # served below, behind the same sign-in as the rest
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
    app.state.model_card_path = Path(model_card) if model_card is not None else MODEL_CARD
    registry = metrics.make_registry(sessions, spool_disk_used, disk_watermark_percent)
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

    @app.get("/healthz", response_model=schemas.Health, tags=["operations"],
             responses={503: {"content": {"application/problem+json": {}},
                              "description": "Database unreachable, or the spool's disk above its watermark"}},
             summary="Liveness, database reachability and spool disk space (no token needed)")
    def healthz(db: Session = Depends(db_session)) -> dict[str, Any]:
        try:
            workers = heartbeats.liveness(db)
        except SQLAlchemyError as exc:
            raise problems.Problem(503, "the database is unreachable") from exc
        if spool_disk_used is not None:
            used = spool_disk_used()
            if used >= disk_watermark_percent:
                raise problems.Problem(503, f"the spool's disk is {used:.1f}% used, at or above the "
                                            f"{disk_watermark_percent:g}% watermark: new images are refused")
        return {"status": "ok", "workers_alive": workers.alive, "worker_last_seen_s": workers.last_seen_s,
                "worker_restarts": worker_restarts() if worker_restarts else None}

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                        401: {"content": {"application/problem+json": {}}}},
             summary="Prometheus metrics: instances received/processed/failed, queue depth, receive→flag "
                     "latency, scores per model version")
    def metrics_route(_who: str = Depends(identity)) -> Response:
        return Response(metrics.render(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(api.router)
    app.include_router(pages.router)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document(_: str = Depends(identity)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(_: str = Depends(identity)) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} – API")

    @app.get("/redoc", include_in_schema=False)
    def redoc(_: str = Depends(identity)) -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} – API")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    return app

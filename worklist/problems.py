"""Errors as RFC 9457 problem details (``application/problem+json``); pages get a short HTML error instead."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# Paths whose errors are always problem details, whatever the client accepts.
MACHINE_PREFIXES = ("/api/", "/api", "/metrics", "/healthz", "/openapi.json")


class NotAuthenticated(Exception):
    """No valid bearer token (API) or session cookie (pages)."""


class Problem(Exception):
    """Raise to answer with a problem document: ``Problem(404, "study not found")``."""

    def __init__(self, status: int, detail: str | None = None, *, title: str | None = None,
                 type_: str = "about:blank", headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail or title or str(status))
        self.status = status
        self.detail = detail
        self.title = title
        self.type = type_
        self.headers = headers
        self.extensions = extensions


def problem_response(request: Request, status: int, detail: str | None = None, *, title: str | None = None,
                     type_: str = "about:blank", headers: dict[str, str] | None = None,
                     **extensions: Any) -> JSONResponse:
    # With type about:blank, the title is the status phrase (RFC 9457 §4.2.1); the specifics go in detail.
    body: dict[str, Any] = {
        "type": type_,
        "title": title or _phrase(status),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body["instance"] = request.url.path
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(MACHINE_PREFIXES):
        return False
    return "text/html" in request.headers.get("accept", "")


def _html_error(request: Request, status: int, message: str) -> Response:
    templates = request.app.state.templates
    return templates.TemplateResponse(request, "error.html", {"status": status, "phrase": _phrase(status),
                                                             "message": message}, status_code=status)


def install(app: FastAPI) -> None:
    """Register the handlers: every error the app can produce leaves as a problem (or an HTML page)."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        if wants_html(request):
            return _html_error(request, exc.status, exc.detail or exc.title or _phrase(exc.status))
        return problem_response(request, exc.status, exc.detail, title=exc.title, type_=exc.type,
                                headers=exc.headers, **exc.extensions)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != _phrase(exc.status_code) else None
        if wants_html(request):
            return _html_error(request, exc.status_code, detail or _phrase(exc.status_code))
        return problem_response(request, exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(NotAuthenticated)
    async def _unauthenticated(request: Request, _exc: NotAuthenticated) -> Response:
        if wants_html(request) and request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return problem_response(request, 401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": 'Bearer realm="cxr-triage"'})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(error["loc"]), "msg": error["msg"]} for error in exc.errors()]
        if wants_html(request):
            return _html_error(request, 422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                       for e in errors))
        return problem_response(request, 422, "the request's parameters are not valid", errors=errors)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "an internal error occurred; it has been logged")

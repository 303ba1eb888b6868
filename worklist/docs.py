"""The API docs (Swagger UI at /docs, ReDoc at /redoc) with their scripts served from the installed
fastapi-offline package: a hospital network often has no way to a CDN, and a blank /docs helps nobody. The
documents stay behind the same sign-in as the API; the assets are public library code."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from worklist.auth import identity

ASSETS_URL = "/static/docs"  # under /static: cached like the page's own assets, no sign-in needed
# Swagger UI and ReDoc need inline script and style; everything else may come from this server only, so the docs
# cannot reach another host even if a setting slipped in.
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
HEADERS = {"Content-Security-Policy": DOCS_CSP, "X-Frame-Options": "DENY"}


def assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install(app: FastAPI) -> None:
    """Add /openapi.json, /docs and /redoc (behind ``identity``) and mount the assets. Call before mounting
    /static: the first mount that matches a path wins."""
    title = f"{app.title} – API"

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document(_: str = Depends(identity)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(_: str = Depends(identity)) -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title=title,
                                   swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
                                   # validatorUrl: Swagger UI would otherwise send the schema's URL to swagger.io
                                   swagger_ui_parameters={"validatorUrl": None, "displayOperationId": True})
        page.headers.update(HEADERS)
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(_: str = Depends(identity)) -> HTMLResponse:
        page = get_redoc_html(openapi_url="/openapi.json", title=title,
                              redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False)
        page.headers.update(HEADERS)
        return page

    app.mount(ASSETS_URL, StaticFiles(directory=str(assets_dir())), name="docs-assets")

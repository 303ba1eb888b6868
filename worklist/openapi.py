"""The OpenAPI document's shared parts: tags, error responses that all point at one RFC 9457 ``Problem`` schema, and
the hook that puts that schema into the document (FastAPI only adds schemas that a route returns as its model)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from worklist.schemas import Problem

PROBLEM_JSON = "application/problem+json"
REF_TEMPLATE = "#/components/schemas/{model}"

TAGS: list[dict[str, str]] = [
    {"name": "worklist", "description": "The prioritized list of studies and its change token."},
    {"name": "studies", "description": "One study: its result, images, read state and who read it."},
    {"name": "images", "description": "The pictures behind a score: the display image the model saw and its heat "
                                      "map."},
    {"name": "model", "description": "The models that produced results, and the model card."},
    {"name": "operations", "description": "Health and Prometheus metrics, for monitoring."},
]
Responses = dict[int | str, dict[str, Any]]


def problem(description: str, **headers: str) -> dict[str, Any]:
    """One error response: its description and the Problem schema (plus any headers it always carries)."""
    response: dict[str, Any] = {"description": description,
                                "content": {PROBLEM_JSON: {"schema": {"$ref": REF_TEMPLATE.format(model="Problem")}}}}
    if headers:
        response["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                               for name, text in headers.items()}
    return response


UNAUTHORIZED = problem("No valid bearer token or session cookie (only when tokens are configured)",
                       **{"WWW-Authenticate": "Bearer realm=\"cxr-triage\""})
FORBIDDEN = problem("A change sent with the page's cookie from another site")
INVALID = problem("A parameter is not valid; `errors` lists each one")


def errors(*extra: tuple[int, dict[str, Any]], invalid: bool = True) -> Responses:
    """401 (and 422 for routes with parameters) plus the route's own errors, e.g. ``(404, problem("..."))``."""
    found: Responses = {401: UNAUTHORIZED}
    if invalid:
        found[422] = INVALID
    found.update(dict(extra))
    return found


def add_problem_schema(app: FastAPI) -> None:
    """Make ``app.openapi()`` carry the Problem schema (and its parts) that every error response refers to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = build()
        _, definitions = models_json_schema([(Problem, "serialization")], ref_template=REF_TEMPLATE)
        document.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
        return document

    app.openapi = openapi  # type: ignore[method-assign]

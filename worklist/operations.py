"""/healthz and /metrics: whether the database, the broker, the workers and the spool's disk can do their part.
The web process knows no broker or spool of its own, so those checks come in from the composition root."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from db import heartbeats
from worklist import metrics, schemas
from worklist.auth import identity
from worklist.openapi import UNAUTHORIZED, problem
from worklist.problems import Problem

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


@dataclass(frozen=True)
class Probes:
    """The checks handed in by ``triage`` (None: not checked here)."""

    spool_disk_used: Callable[[], float] | None = None  # percent of the spool's disk in use
    disk_watermark_percent: float = 90.0
    broker_ok: Callable[[], bool] | None = None  # the Celery broker takes a connection (quick, bounded)
    worker_restarts: Callable[[], int] | None = None  # `serve` only


def _broker(probes: Probes) -> str:
    if probes.broker_ok is None:
        return "not_checked"
    try:
        return "ok" if probes.broker_ok() else "down"
    except Exception as exc:  # a check that cannot even run says the same as one that failed
        log.warning("broker check failed (%s)", type(exc).__name__)
        return "down"


def check(request: Request) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """(the state of each part, the facts behind them, what is down in words)."""
    probes: Probes = request.app.state.probes
    checks = {"database": "ok", "broker": _broker(probes), "workers": "unknown", "spool_disk": "not_checked"}
    facts: dict[str, Any] = {"workers_alive": 0, "worker_last_seen_s": None, "spool_disk_used_percent": None,
                             "disk_watermark_percent": probes.disk_watermark_percent,
                             "worker_restarts": probes.worker_restarts() if probes.worker_restarts else None}
    down: list[str] = []
    try:
        with request.app.state.sessions() as session:
            workers = heartbeats.liveness(session)
    except SQLAlchemyError:
        checks["database"] = "down"
        down.append("the database is unreachable")
    else:
        facts.update(workers_alive=workers.alive, worker_last_seen_s=workers.last_seen_s)
        # A fresh installation has seen no worker yet (the web server starts first); one that had workers and
        # hears from none has stopped classifying.
        checks["workers"] = "none_seen" if workers.last_seen_s is None else "ok" if workers.alive else "down"
        if checks["workers"] == "down":
            down.append(f"no worker heartbeat for {workers.last_seen_s:.0f} s: received images are not being "
                        f"classified")
    if checks["broker"] == "down":
        down.append("the broker is unreachable: new images wait in the outbox")
    if probes.spool_disk_used is not None:
        used = probes.spool_disk_used()
        facts["spool_disk_used_percent"] = used
        checks["spool_disk"] = "down" if used >= probes.disk_watermark_percent else "ok"
        if checks["spool_disk"] == "down":
            down.append(f"the spool's disk is {used:.1f}% used, at or above the {probes.disk_watermark_percent:g}% "
                        f"watermark: new images are refused")
    return checks, facts, down


@router.get("/healthz", response_model=schemas.Health, operation_id="getHealth",
            responses={503: problem("The database or the broker is unreachable, workers stopped beating, or the "
                                    "spool's disk is above its watermark; `checks` says which")},
            summary="Database, broker, worker liveness and spool disk space (no token needed)")
def healthz(request: Request) -> dict[str, Any]:
    checks, facts, down = check(request)
    if down:
        raise Problem(503, "; ".join(down), checks=checks)
    return {"status": "ok", "checks": checks, **facts}


@router.get("/metrics", response_class=Response, operation_id="getMetrics",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}},
                                         "application/openmetrics-text": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format, or OpenMetrics when the Accept header asks "
                                            "for it"},
                       401: UNAUTHORIZED},
            summary="Prometheus metrics: intake, outcomes, queue, latency, scores and flags per model, "
                    "rejections, deliveries, liveness, build and models")
def metrics_route(request: Request, _who: str = Depends(identity)) -> Response:
    body, content_type = metrics.render(request.app.state.metrics_registry, request.headers.get("accept"))
    return Response(body, media_type=content_type)

"""FastAPI app: the prioritized worklist as JSON and as a page; every view says it is triage support."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Iterator

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.templating import Jinja2Templates
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.engine import make_engine, make_session_factory, migrate
from db.models import StudyStatus

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TRIAGE_NOTICE = "Triage support only — not a diagnosis. Every study must still be read by a radiologist."
UNTRAINED_NOTICE = "UNTRAINED MODEL — scores are meaningless"


def create_app(database_url: str, api_token: str = "") -> FastAPI:
    """The app; with ``api_token`` set, every /api route needs ``Authorization: Bearer <token>``."""
    engine = make_engine(database_url)
    migrate(engine)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    app = FastAPI(title="cxr-triage worklist", version="0.1.0", description=TRIAGE_NOTICE)
    bearer = HTTPBearer(auto_error=False)

    def session() -> Iterator[Session]:
        with sessions() as db_session:
            yield db_session

    def authorised(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if not api_token:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials, api_token):
            raise HTTPException(status_code=401, detail="a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(HTTPException)
    async def problem(_: Request, exc: HTTPException) -> JSONResponse:
        # RFC 9457 problem details
        return JSONResponse(
            {"type": "about:blank", "title": exc.detail, "status": exc.status_code},
            status_code=exc.status_code,
            media_type="application/problem+json",
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(error["loc"]), "msg": error["msg"]} for error in exc.errors()]
        return JSONResponse(
            {"type": "about:blank", "title": "invalid request", "status": 422, "errors": errors},
            status_code=422,
            media_type="application/problem+json",
        )

    @app.get("/healthz")
    def healthz(db: Session = Depends(session)) -> dict[str, str]:
        db.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/api/worklist", dependencies=[Depends(authorised)])
    def api_worklist(
        status: StudyStatus | None = Query(None, description="PENDING, DONE or NOT_ANALYSED"),
        flagged: bool | None = Query(None),
        limit: int = Query(200, ge=1, le=1000),
        offset: int = Query(0, ge=0),
        db: Session = Depends(session),
    ) -> dict[str, Any]:
        entries = queries.worklist(db, status=status.value if status else None, flagged=flagged, limit=limit,
                                   offset=offset)
        untrained = queries.untrained_models_in_use(db)
        return {
            "notice": TRIAGE_NOTICE,
            "untrained_model": untrained,
            "model_warning": UNTRAINED_NOTICE if untrained else None,
            "items": [entry.to_dict() for entry in entries],
        }

    @app.get("/api/studies/{study_uid}", dependencies=[Depends(authorised)])
    def api_study(study_uid: str, db: Session = Depends(session)) -> dict[str, Any]:
        detail = queries.study_detail(db, study_uid)
        if detail is None:
            raise HTTPException(status_code=404, detail="study not found")
        detail["notice"] = TRIAGE_NOTICE
        return detail

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, db: Session = Depends(session)) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request,
            "worklist.html",
            {
                "entries": queries.worklist(db),
                "untrained": queries.untrained_models_in_use(db),
                "notice": TRIAGE_NOTICE,
                "untrained_notice": UNTRAINED_NOTICE,
            },
        )

    app.state.engine = engine
    return app

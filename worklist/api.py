"""The REST API under /api (documented by the OpenAPI schema at /openapi.json, browsable at /docs)."""

from __future__ import annotations

import inspect
from datetime import date
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, PlainTextResponse
from sqlalchemy.orm import Session

from db.audit import audit_events
from db.model_registry import model_versions
from db.retention import purged_at
from db.worklist import (
    UNREAD_FLAGGED,
    OrderPriority,
    PatientSex,
    WorklistFilter,
    WorklistSort,
    WorklistStatus,
    instance_image_path,
    set_read,
    study_exists,
    study_version,
    worklist,
    worklist_total,
    worklist_version,
)
from worklist import schemas
from worklist.auth import identity
from worklist.deps import TEXT_PATTERN, SopUid, StudyUid, audit, db_session
from worklist.openapi import FORBIDDEN, errors, problem
from worklist.presentation import retention_notice
from worklist.problems import Problem
from worklist.views import notices, study_body, worklist_item

router = APIRouter(prefix="/api")  # each route names its tag (worklist, studies, images, model)
NO_STUDY = (404, problem("No such study"))
ERRORS = errors()
NOT_FOUND = errors(NO_STUDY)
CHANGE = errors(NO_STUDY, (403, FORBIDDEN))
Identity = Annotated[str, Depends(identity)]
Db = Annotated[Session, Depends(db_session)]


SORT_DESCRIPTION = (
    "priority (the default) never buries a new flag: (1) unread flagged studies whose order is STAT, newest flag "
    "first; (2) the other unread flagged studies, newest flag first, so a study flagged a minute ago is on the first "
    "page whatever the backlog; (3) unread studies without a flag (not flagged, pending, not analysed): STAT orders "
    "first, then arrival order; (4) read studies, in the same order. flagged_score = the earlier order: flagged "
    "first by highest score, then arrival order, read studies last in each group. The others: newest or oldest "
    "received first, highest score first, patient name, accession number.")


class WorklistQuery:
    """The filters, sort and page shared by the API and the page."""

    def __init__(
        self,
        request: Request,
        status: WorklistStatus | None = Query(
            None, description="PENDING, DONE, NOT_ANALYSED (includes FAILED) or FAILED"),
        flagged: bool | None = Query(None, description="Only flagged (true) or only unflagged (false) studies"),
        read: bool | None = Query(None, description="Only read (true) or only unread (false) studies"),
        received_from: date | None = Query(None, description="Received on or after this day "
                                                             "(a day in the site's time zone, TRIAGE_TIMEZONE)"),
        received_to: date | None = Query(None, description="Received on or before this day "
                                                           "(a day in the site's time zone, TRIAGE_TIMEZONE)"),
        q: str | None = Query(None, max_length=200, pattern=TEXT_PATTERN,
                              description="Words that must all occur in patient name, patient ID or accession"),
        modality: str | None = Query(None, max_length=16, pattern=TEXT_PATTERN,
                                     description="Only this modality (CR, DX…; case ignored)"),
        sex: PatientSex | None = Query(None, description="Only this patient sex (M, F or O)"),
        priority: OrderPriority | None = Query(
            None, description="Only this order priority (from the file, or the sender's rule "
                              "TRIAGE_PRIORITY_BY_CALLING_AET)"),
        age_min: int | None = Query(None, ge=0, le=200, description="Patient at least this old (years); studies of "
                                                                     "unknown age are left out"),
        age_max: int | None = Query(None, ge=0, le=200, description="Patient at most this old (years); studies of "
                                                                     "unknown age are left out"),
        institution: str | None = Query(None, max_length=200, pattern=TEXT_PATTERN,
                                        description="Text that must occur in the institution name (case ignored)"),
        sort: WorklistSort = Query(WorklistSort.PRIORITY, description=SORT_DESCRIPTION),
        limit: int = Query(200, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=1_000_000_000),
    ) -> None:
        self.filters = WorklistFilter(
            status=status.value if status else None, flagged=flagged, read=read, received_from=received_from,
            received_to=received_to, text=q, zone=request.app.state.zone, modality=modality,
            sex=sex.value if sex else None, priority=priority.value if priority else None, age_min=age_min,
            age_max=age_max, institution=institution)
        self.sort, self.limit, self.offset = sort, limit, offset
        self.borderline_band: float = request.app.state.borderline_band
        self.viewer_url_template: str = request.app.state.viewer_url_template
        refuse_unknown_parameters(request)


def refuse_unknown_parameters(request: Request) -> None:
    """A misspelt filter (``flaged=true``) must not silently answer with the whole, unfiltered list."""
    unknown = sorted(set(request.query_params) - WORKLIST_PARAMETERS)
    if unknown:
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name),
                                       "msg": "not a parameter of this operation"} for name in unknown])


WORKLIST_PARAMETERS = frozenset(inspect.signature(WorklistQuery.__init__).parameters) - {"self", "request"}


def worklist_body(db: Session, params: WorklistQuery) -> schemas.Worklist:
    entries = worklist(db, params.filters, sort=params.sort, limit=params.limit, offset=params.offset,
                       borderline_band=params.borderline_band)
    return schemas.Worklist(**notices(db), total=worklist_total(db, params.filters), limit=params.limit,
                            offset=params.offset, sort=params.sort.value,
                            items=[worklist_item(entry, params.viewer_url_template) for entry in entries])


@router.get("/worklist", response_model=schemas.Worklist, responses=ERRORS, tags=["worklist"],
            operation_id="getWorklist", summary="The prioritized worklist (filters, sort, paging)")
def api_worklist(request: Request, who: Identity, db: Db, params: WorklistQuery = Depends()) -> schemas.Worklist:
    """Every study, by default in the triage order (see the ``sort`` parameter): unread flagged STAT studies, the
    other unread flagged studies newest flag first, unread unflagged studies (STAT first, then arrival order), then
    read studies. Each item carries its context (age, sex, modality, institution, station, order priority), whether
    its score is borderline, whether the patient lies outside the model's validated population, and how long an
    unread study has waited. Triage support, not a diagnosis."""
    body = worklist_body(db, params)
    audit(request, who, "list")
    return body


@router.get("/worklist/version", response_model=schemas.WorklistVersion, responses=errors(invalid=False),
            tags=["worklist"], operation_id="getWorklistVersion",
            summary="A token that changes when the worklist may have changed (poll it, then fetch the list)")
def api_worklist_version(_who: Identity, db: Db) -> dict[str, str | int]:
    return {"version": worklist_version(db), "unread_flagged": worklist_total(db, UNREAD_FLAGGED)}


@router.get("/studies/{study_uid}/version", response_model=schemas.StudyVersion, responses=NOT_FOUND,
            tags=["studies"], operation_id="getStudyVersion",
            summary="A token that changes when the study's result, read state or images may have changed (and the "
                    "worklist's unread flagged count)")
def api_study_version(study_uid: StudyUid, _who: Identity, db: Db) -> dict[str, str | int]:
    """What an open study page polls, once per interval: ``version`` tells it when to fetch the page again, and
    ``unread_flagged`` (the same count as ``GET /api/worklist/version`` gives: the whole worklist, no filter) tells it
    when flags were raised elsewhere, for the tab title and the new-flag alerts."""
    version = study_version(db, study_uid)
    if version is None:
        raise Problem(404, "study not found")
    return {"version": version, "unread_flagged": worklist_total(db, UNREAD_FLAGGED)}


@router.get("/studies/{study_uid}", response_model=schemas.StudyDetail, responses=NOT_FOUND,
            tags=["studies"], operation_id="getStudy",
            summary="One study with each image's score, decision and picture links (the read is audited)")
def api_study(request: Request, study_uid: StudyUid, who: Identity, db: Db) -> schemas.StudyDetail:
    body = study_body(db, study_uid, "/api", request.app.state.borderline_band, request.app.state.viewer_url_template)
    audit(request, who, "api", study_uid)
    return body


def image_response(request: Request, db: Session, who: str, study_uid: str, sop_uid: str, kind: str
                   ) -> FileResponse:
    path = instance_image_path(db, study_uid, sop_uid, kind)
    if not path or not FilePath(path).is_file():
        removed = purged_at(db, study_uid, sop_uid)
        if removed is not None:  # the retention policy deleted it: gone for good, not merely missing
            raise Problem(410, retention_notice(request.app.state.retention_days), purged_at=removed.isoformat())
        raise Problem(404, f"no {kind} for this image (not analysed, not finished, or not written)")
    audit(request, who, "image", study_uid, f"{kind} {sop_uid}")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-store"})


PNG = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
             "description": "PNG image"},
       **errors((404, problem("No such image in this study, or no picture for it (not analysed, not finished, or "
                              "not written)")),
                (410, problem("The retention policy (TRIAGE_RETENTION_DAYS) removed the image's pictures; "
                              "`purged_at` says when")))}


@router.get("/studies/{study_uid}/images/{sop_instance_uid}/preview.png", response_class=FileResponse,
            responses=PNG, tags=["images"], operation_id="getPreview",
            summary="The display image the model saw, downscaled (PNG)")
def api_preview(request: Request, study_uid: StudyUid, sop_instance_uid: SopUid, who: Identity, db: Db
                ) -> FileResponse:
    return image_response(request, db, who, study_uid, sop_instance_uid, "preview")


@router.get("/studies/{study_uid}/images/{sop_instance_uid}/heatmap.png", response_class=FileResponse,
            responses=PNG, tags=["images"], operation_id="getHeatmap",
            summary="The Grad-CAM heat map over the preview (PNG): where the evidence for the positive class lies; "
                    "not a finding")
def api_heatmap(request: Request, study_uid: StudyUid, sop_instance_uid: SopUid, who: Identity, db: Db
                ) -> FileResponse:
    return image_response(request, db, who, study_uid, sop_instance_uid, "heatmap")


@router.get("/studies/{study_uid}/images/{sop_instance_uid}/display.png", response_class=FileResponse,
            responses=PNG, tags=["images"], operation_id="getDisplayImage",
            summary="The display image the model saw at full resolution (8-bit PNG after the LUTs): the zoom; "
                    "triage support, not for diagnosis")
def api_display(request: Request, study_uid: StudyUid, sop_instance_uid: SopUid, who: Identity, db: Db
                ) -> FileResponse:
    return image_response(request, db, who, study_uid, sop_instance_uid, "display")


def mark(request: Request, study_uid: str, who: str, read: bool) -> schemas.ReadState:
    with request.app.state.sessions.begin() as session:
        study = set_read(session, study_uid, read=read, actor=who)
        if study is None:
            raise Problem(404, "study not found")
        return schemas.ReadState(study_uid=study_uid, read=study.read_at is not None, read_at=study.read_at,
                                 read_by=study.read_by)


@router.put("/studies/{study_uid}/read", response_model=schemas.ReadState, responses=CHANGE, tags=["studies"],
            operation_id="markStudyRead",
            summary="Mark read: the study drops to the bottom of its group (it never leaves the list)")
def api_mark_read(request: Request, study_uid: StudyUid, who: Identity) -> schemas.ReadState:
    return mark(request, study_uid, who, True)


@router.delete("/studies/{study_uid}/read", response_model=schemas.ReadState, responses=CHANGE,
               tags=["studies"], operation_id="markStudyUnread", summary="Mark unread")
def api_mark_unread(request: Request, study_uid: StudyUid, who: Identity) -> schemas.ReadState:
    return mark(request, study_uid, who, False)


@router.get("/studies/{study_uid}/audit", response_model=list[schemas.AuditEvent], responses=NOT_FOUND,
            tags=["studies"], operation_id="getStudyAudit", summary="Who read this study, and when (newest first)")
def api_study_audit(study_uid: StudyUid, _who: Identity, db: Db,
                    limit: int = Query(100, ge=1, le=1000)) -> list[schemas.AuditEvent]:
    if not study_exists(db, study_uid):
        raise Problem(404, "study not found")
    return [schemas.AuditEvent.model_validate(event) for event in audit_events(db, study_uid=study_uid, limit=limit)]


@router.get("/models", response_model=schemas.Models, responses=errors(invalid=False), tags=["model"],
            operation_id="getModels",
            summary="The models that produced results, with their training metadata and thresholds")
def api_models(request: Request, _who: Identity, db: Db) -> schemas.Models:
    return schemas.Models(**notices(db), model_card_available=_model_card(request) is not None,
                          models=model_versions(db))


def _model_card(request: Request) -> FilePath | None:
    """The model card the composition root handed in, when it exists."""
    path: FilePath | None = request.app.state.model_card_path
    return path if path is not None and path.is_file() else None


@router.get("/model-card", response_class=PlainTextResponse, tags=["model"], operation_id="getModelCard",
            responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}},
                             "description": "The model card, Markdown"},
                       **errors((404, problem("No model card has shipped with this installation")), invalid=False)},
            summary="The model card (Markdown), when one has shipped")
def api_model_card(request: Request, _who: Identity) -> PlainTextResponse:
    path = _model_card(request)
    if path is None:
        raise Problem(404, "no model card has shipped with this installation yet")
    return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")

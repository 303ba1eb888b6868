"""The radiologists' pages: the worklist, a study, the model in use, and the login form (with tokens only).

Server-rendered HTML; a little JavaScript (static/worklist.js) keeps the list current without a reload, raises the
alerts for new flags (tab title, the "N new flagged" bar, desktop notification, beep), adds the reading keys and the
whole-row link, the theme choice, the heat map toggle and the full-size image. Everything works without it, except
those.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, timedelta, tzinfo
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from db import web_sessions
from db.model_registry import model_versions, untrained_models_in_use
from db.models import utcnow
from db.worklist import (
    EVERY_STUDY,
    UNREAD_FLAGGED,
    OrderPriority,
    PatientSex,
    WorklistEntry,
    WorklistFilter,
    WorklistSort,
    WorklistStatus,
    set_read,
    study_version,
    worklist,
    worklist_modalities,
    worklist_total,
    worklist_version,
)
from worklist.auth import COOKIE_MAX_AGE_S, COOKIE_NAME, Tokens, identity
from worklist.deps import StudyUid, audit, db_session
from worklist.presentation import (
    TRIAGE_NOTICE,
    UNTRAINED_NOTICE,
    age_sex,
    age_sex_words,
    retention_notice,
    status_text,
    viewer_url,
)
from worklist.problems import Problem
from worklist.views import study_body

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)
LOGIN_ATTEMPTS = 10  # failed sign-ins from one address within LOGIN_WINDOW before the next is refused (429)
LOGIN_WINDOW = timedelta(minutes=1)
PER_PAGE_CHOICES = (25, 50, 100)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

SORT_LABELS = {
    "priority": "Priority (newest flag first)",
    "flagged_score": "Flagged first by score",
    "received_desc": "Newest first",
    "received_asc": "Oldest first",
    "score_desc": "Highest score first",
    "patient": "Patient name",
    "accession": "Accession number",
}
STATUS_LABELS = {"PENDING": "pending", "DONE": "done", "NOT_ANALYSED": "not analysed or failed",
                 "FAILED": "failed"}
# (value, label) of each choice in the worklist form's drop-downs; "" means no filter.
FILTER_OPTIONS = {
    "flag": [("", "all"), ("flagged", "flagged"), ("not_flagged", "not flagged")],
    "status": [("", "all"), *STATUS_LABELS.items()],
    "read": [("", "all"), ("unread", "unread"), ("read", "read")],
    "sex": [("", "all"), ("F", "F"), ("M", "M"), ("O", "O")],
    "priority": [("", "all"), *((p.value, p.value) for p in OrderPriority)],
    "sort": list(SORT_LABELS.items()),
    "per_page": [(str(n), str(n)) for n in PER_PAGE_CHOICES],
}


@dataclass
class PageQuery:
    """The worklist page's query string, read leniently: a bad value is ignored and said so, never a 422."""

    values: dict[str, str] = field(default_factory=dict)  # what the form shows
    filters: WorklistFilter = EVERY_STUDY
    sort: WorklistSort = WorklistSort.PRIORITY
    page: int = 1
    per_page: int = 50
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, params: dict[str, str], zone: tzinfo = UTC) -> PageQuery:
        query = cls()
        criteria: dict[str, Any] = {"zone": zone}  # the WorklistFilter's fields
        get = lambda key: _CONTROL.sub("", params.get(key, "")).strip()[:200]  # noqa: E731
        flag, status, read = get("flag"), get("status").upper(), get("read")
        criteria["flagged"] = {"flagged": True, "not_flagged": False}.get(flag)
        query.values["flag"] = flag if criteria["flagged"] is not None else ""
        criteria["status"] = status if status in WorklistStatus.__members__ else None
        query.values["status"] = criteria["status"] or ""
        criteria["read"] = {"read": True, "unread": False}.get(read)
        query.values["read"] = read if criteria["read"] is not None else ""
        for key, label in (("received_from", "received from"), ("received_to", "received to")):
            raw = get(key)
            criteria[key] = None
            query.values[key] = ""
            if raw:
                try:
                    criteria[key] = date.fromisoformat(raw)
                    query.values[key] = raw
                except ValueError:
                    query.problems.append(f"“{raw}” is not a date (YYYY-MM-DD): the {label} filter is ignored")
        criteria["text"] = get("q") or None
        query.values["q"] = get("q")
        query._parse_context(get, criteria)
        query.filters = WorklistFilter(**criteria)
        sort = get("sort")
        if sort in {s.value for s in WorklistSort}:
            query.sort = WorklistSort(sort)
        query.values["sort"] = query.sort.value
        query.per_page = int(get("per_page")) if get("per_page") in {str(n) for n in PER_PAGE_CHOICES} else 50
        query.values["per_page"] = str(query.per_page)
        page = get("page")
        query.page = min(int(page), 1_000_000) if page.isdecimal() and int(page) >= 1 else 1
        return query

    def _parse_context(self, get: Any, criteria: dict[str, Any]) -> None:
        """Modality, sex, priority, age range and institution, as the API names them."""
        sex, priority = get("sex").upper(), get("priority").upper()
        choices = (("sex", sex, PatientSex.__members__), ("priority", priority, OrderPriority.__members__))
        for key, value, allowed in choices:
            criteria[key] = value if value in allowed else None
            self.values[key] = criteria[key] or ""
        for key in ("modality", "institution"):
            criteria[key] = get(key) or None
            self.values[key] = get(key)
        for key, label in (("age_min", "minimum age"), ("age_max", "maximum age")):
            raw = get(key)
            criteria[key] = int(raw) if raw.isdecimal() and int(raw) <= 200 else None
            self.values[key] = raw if criteria[key] is not None else ""
            if raw and criteria[key] is None:
                self.problems.append(f"“{raw}” is not an age in years: the {label} filter is ignored")

    @property
    def filtered(self) -> bool:
        """Whether any criterion is set (an empty list then says its filters match nothing, not that none came)."""
        return self.filters != replace(EVERY_STUDY, zone=self.filters.zone)

    def link(self, **overrides: Any) -> str:
        """A query string for this view with some values changed (empty values left out)."""
        values = {**self.values, "page": str(self.page), **{k: str(v) for k, v in overrides.items()}}
        if values.get("page") == "1":
            values.pop("page")
        if values.get("sort") == "priority":
            values.pop("sort")
        if values.get("per_page") == "50":
            values.pop("per_page")
        return urlencode({k: v for k, v in values.items() if v})


def _page_frame(request: Request, db: Session, who: str, untrained: bool | None = None) -> dict[str, Any]:
    """What every page shows around its content: the notices, who is signed in, the form token, the poll interval
    (``untrained``: already known to the caller, else looked up)."""
    tokens: Tokens = request.app.state.tokens
    if untrained is None:
        untrained = untrained_models_in_use(db)
    return {"notice": TRIAGE_NOTICE, "untrained": untrained, "untrained_notice": UNTRAINED_NOTICE,
            "identity": who, "tokens_enabled": tokens.enabled, "csrf": tokens.csrf_token(who),
            "poll_ms": int(request.app.state.poll_interval_s * 1000)}


def _html(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status_code)


@router.get("/", response_class=HTMLResponse)
def worklist_page(request: Request, who: str = Depends(identity), db: Session = Depends(db_session)
                  ) -> HTMLResponse:
    query = PageQuery.parse(dict(request.query_params), request.app.state.zone)
    total = worklist_total(db, query.filters)
    pages = max(1, -(-total // query.per_page))
    query.page = min(query.page, pages)
    offset = (query.page - 1) * query.per_page
    entries = worklist(db, query.filters, sort=query.sort, limit=query.per_page, offset=offset,
                       borderline_band=request.app.state.borderline_band)
    # The tab title's count: the unread flagged studies of this list (its filters, all its pages).
    unread_flagged = 0 if query.filters.flagged is False or query.filters.read is True else \
        worklist_total(db, replace(query.filters, flagged=True, read=False))
    modalities = worklist_modalities(db)
    if query.values["modality"] and query.values["modality"].upper() not in modalities:
        modalities.append(query.values["modality"])
    versions = sorted({e.model_version for e in entries if e.model_version})
    template = request.app.state.viewer_url_template
    context = _page_frame(request, db, who) | {
        "entries": entries, "total": total, "query": query, "pages": pages, "offset": offset,
        "version": worklist_version(db), "status_text": status_text, "sort_labels": SORT_LABELS,
        "filter_options": FILTER_OPTIONS | {"modality": [("", "all"), *((m, m) for m in modalities)]},
        "back": quote(query.link(), safe=""), "unread_flagged": unread_flagged,
        "model_versions": versions, "untrained_versions": {e.model_version for e in entries
                                                           if e.model_trained is False},
        "viewer_urls": {e.study_uid: viewer_url(template, e.study_uid, e.accession_number, e.patient_id)
                        for e in entries},
        "age_sex": age_sex, "age_sex_words": age_sex_words,
        "more_filters_open": any(query.values[key] for key in ("received_from", "received_to", "institution"))
        or query.per_page != 50,
    }
    audit(request, who, "list", detail="GET /")
    return _html(request, "worklist.html", context)


def _clean_back(value: str) -> str:
    """The worklist query string to return to (no control characters, bounded, never a path)."""
    return _CONTROL.sub("", value)[:1000].lstrip("/?")


def _clean_pos(value: str | None) -> int | None:
    """A study's place in the list the reader came from (0 = first), or None."""
    value = (value or "").strip()
    return int(value) if value.isdecimal() and len(value) <= 9 else None


def neighbours(db: Session, back: str, pos: int | None, study_uid: str, zone: tzinfo) -> dict[str, Any]:
    """The studies before and after this one in the list the reader came from (``back``: its query string, so the
    same filters and sort; ``pos``: where the study stood in it). A study that has left its place since (marked
    read, so it moved down) is followed by the study that now stands there: reading on means reading the next one.
    Without ``pos`` the study is looked for on the page ``back`` names. {"prev": …, "next": …}, each with the
    study's entry, its place and the query string of its page; a key is absent at either end of the list."""
    query = PageQuery.parse({key: values[0] for key, values in parse_qs(back).items()}, zone)

    def window(offset: int, limit: int) -> list[WorklistEntry]:
        return worklist(db, query.filters, sort=query.sort, limit=limit, offset=offset)

    if pos is None:
        offset = (query.page - 1) * query.per_page
        uids = [entry.study_uid for entry in window(offset, query.per_page)]
        if study_uid not in uids:
            return {}
        pos = offset + uids.index(study_uid)
    start = max(0, pos - 2)
    entries = window(start, pos - start + 3)

    def at(place: int) -> WorklistEntry | None:
        return entries[place - start] if place >= 0 and 0 <= place - start < len(entries) else None

    # Still in its place, or moved by one (a study came or went above it)?
    here = next((pos + shift for shift in (0, 1, -1) if (entry := at(pos + shift)) and entry.study_uid == study_uid),
                None)
    if here == pos + 1 and (moved := at(here)) and (taken := at(pos)) and moved.read and not taken.read:
        here = None  # marked read, it went down its group: the study behind it took its place
    places = {"prev": here - 1, "next": here + 1} if here is not None else {"prev": pos - 1, "next": pos}
    found = {}
    for key, place in places.items():
        if (entry := at(place)) and entry.study_uid != study_uid:
            found[key] = {"entry": entry, "pos": place, "back": query.link(page=place // query.per_page + 1)}
    return found


def study_link(study_uid: str, back: str, pos: int | None) -> str:
    """The study page's address, with the list to return to and the study's place in it."""
    params = ([f"back={quote(back, safe='')}"] if back else []) + ([f"pos={pos}"] if pos is not None else [])
    return f"/studies/{quote(study_uid, safe='')}" + ("?" + "&".join(params) if params else "")


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_uid: StudyUid, who: str = Depends(identity),
               db: Session = Depends(db_session)) -> HTMLResponse:
    study = study_body(db, study_uid, "/api", request.app.state.borderline_band, request.app.state.viewer_url_template)
    back = _clean_back(request.query_params.get("back", ""))
    pos = _clean_pos(request.query_params.get("pos"))
    near = neighbours(db, back, pos, study_uid, request.app.state.zone)
    context = _page_frame(request, db, who, study.untrained_model) | {
        "study": study, "back": back, "status_text": status_text, "back_param": quote(back, safe=""),
        "version": study_version(db, study_uid), "pos": pos, "age_sex": age_sex,
        "age_sex_words": age_sex_words, "unread_flagged": worklist_total(db, UNREAD_FLAGGED),
        "images_removed": retention_notice(request.app.state.retention_days),
        "near": {key: dict(value, href=study_link(value["entry"].study_uid, value["back"], value["pos"]))
                 for key, value in near.items()}}
    audit(request, who, "view", study_uid, "GET /studies/{uid}")
    return _html(request, "study.html", context)


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body())[:10_000].decode("utf-8", errors="replace")
    return {key: values[0] for key, values in parse_qs(body).items()}


@router.post("/studies/{study_uid}/read")
async def study_read_form(request: Request, study_uid: StudyUid, who: str = Depends(identity)) -> Response:
    form = await _form(request)
    request.app.state.tokens.check_csrf(who, form.get("csrf"))
    action = form.get("action")
    if action not in ("read", "unread"):
        raise Problem(400, "action must be read or unread")
    with request.app.state.sessions.begin() as session:
        if set_read(session, study_uid, read=action == "read", actor=who) is None:
            raise Problem(404, "study not found")
    return RedirectResponse(study_link(study_uid, _clean_back(form.get("back", "")), _clean_pos(form.get("pos"))),
                            status_code=303)


@router.get("/model", response_class=HTMLResponse)
def model_page(request: Request, who: str = Depends(identity), db: Session = Depends(db_session)) -> HTMLResponse:
    path = request.app.state.model_card_path
    card = path.read_text(encoding="utf-8") if path is not None and path.is_file() else None
    context = _page_frame(request, db, who) | {"models": model_versions(db), "card": card}
    return _html(request, "model.html", context)


def _safe_next(value: str | None) -> str:
    value = _CONTROL.sub("", value or "")
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"


def _login_context(target: str, error: str | None = None) -> dict[str, Any]:
    return {"notice": TRIAGE_NOTICE, "next": target, "error": error, "identity": None, "tokens_enabled": True}


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    if not request.app.state.tokens.enabled:
        return RedirectResponse("/", status_code=303)
    return _html(request, "login.html", _login_context(_safe_next(request.query_params.get("next"))))


@router.post("/login")
async def login(request: Request) -> Response:
    tokens: Tokens = request.app.state.tokens
    if not tokens.enabled:
        return RedirectResponse("/", status_code=303)
    form = await _form(request)
    target = _safe_next(form.get("next"))
    client = request.client.host if request.client else "?"
    with request.app.state.sessions.begin() as db:
        throttled = web_sessions.recent_failed_logins(db, client, utcnow() - LOGIN_WINDOW) >= LOGIN_ATTEMPTS
        name = None if throttled else tokens.identify(form.get("token", ""))
        if name is None:
            web_sessions.record_failed_login(db, client)
            log.warning("failed sign-in from %s%s", client, " (throttled)" if throttled else "")
        else:
            cookie = web_sessions.start_session(db, name, timedelta(seconds=COOKIE_MAX_AGE_S))
    if throttled:
        seconds = int(LOGIN_WINDOW.total_seconds())
        raise Problem(429, f"too many failed sign-ins from this address; try again in {seconds} s",
                      headers={"Retry-After": str(seconds)})
    if name is None:
        return _html(request, "login.html", _login_context(target, "That token is not valid."), status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE_NAME, cookie, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
async def logout(request: Request, who: str = Depends(identity)) -> Response:
    request.app.state.tokens.check_csrf(who, (await _form(request)).get("csrf"))
    with request.app.state.sessions.begin() as db:
        web_sessions.end_session(db, request.cookies.get(COOKIE_NAME))  # the cookie is dead even if kept
    response = RedirectResponse("/login" if request.app.state.tokens.enabled else "/", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response

"""The study and list bodies the API answers and the page renders: one builder each, so the two never differ. The
schemas read the database's rows by attribute; what a row does not carry (the viewer link, the picture links, the
notices, the reports sent back) is laid over it here."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from db import reports
from db.model_registry import untrained_models_in_use
from db.worklist import DEFAULT_BORDERLINE_BAND, WorklistEntry, study_detail
from worklist import schemas
from worklist.deps import image_url
from worklist.presentation import TRIAGE_NOTICE, UNTRAINED_NOTICE, viewer_url
from worklist.problems import Problem


class Overlay:
    """A row read by attribute, with some values laid over it: what a schema validates when an answer is a database
    row plus what only the web side knows."""

    def __init__(self, row: object, **values: Any) -> None:
        self._row = row
        self._values = values

    def __getattr__(self, name: str) -> Any:  # only for names that are not the two above
        values = self.__dict__["_values"]
        return values[name] if name in values else getattr(self.__dict__["_row"], name)


def notices(db: Session) -> dict[str, Any]:
    """What every API answer says about itself: triage support only, and whether the model in use is untrained."""
    untrained = untrained_models_in_use(db)
    return {"notice": TRIAGE_NOTICE, "untrained_model": untrained,
            "model_warning": UNTRAINED_NOTICE if untrained else None}


def _viewer_url(entry: WorklistEntry, template: str) -> str | None:
    """The study in the site's viewer (None without TRIAGE_VIEWER_URL)."""
    return viewer_url(template, entry.study_uid, entry.accession_number, entry.patient_id)


def worklist_item(entry: WorklistEntry, viewer_url_template: str = "") -> schemas.WorklistItem:
    """One worklist row as the API and ``cxr-triage worklist --json`` give it: the row with its viewer link."""
    return schemas.WorklistItem.model_validate(Overlay(entry, viewer_url=_viewer_url(entry, viewer_url_template)))


def study_body(db: Session, study_uid: str, prefix: str,
               borderline_band: float = DEFAULT_BORDERLINE_BAND, viewer_url_template: str = ""
               ) -> schemas.StudyDetail:
    """One study with its images (their picture links under ``prefix``, or when the retention policy removed them)
    and the reports sent back."""
    detail = study_detail(db, study_uid, borderline_band=borderline_band)
    if detail is None:
        raise Problem(404, "study not found")
    instances = [
        Overlay(instance,
                preview_url=image_url(prefix, study_uid, instance.sop_instance_uid, "preview")
                if instance.has_preview else None,
                heatmap_url=image_url(prefix, study_uid, instance.sop_instance_uid, "heatmap")
                if instance.has_heatmap else None,
                display_url=image_url(prefix, study_uid, instance.sop_instance_uid, "display")
                if instance.has_display else None)
        for instance in detail.instances
    ]
    return schemas.StudyDetail.model_validate(Overlay(
        detail, instances=instances, viewer_url=_viewer_url(detail, viewer_url_template),
        reports=reports.study_reports(db, study_uid), **notices(db)))

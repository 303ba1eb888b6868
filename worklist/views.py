"""The study and list bodies the API answers and the page renders: one builder each, so the two never differ."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from db import queries, reports
from worklist.deps import image_url
from worklist.presentation import TRIAGE_NOTICE, UNTRAINED_NOTICE, viewer_url
from worklist.problems import Problem


def notices(db: Session) -> dict[str, Any]:
    """What every API answer says about itself: triage support only, and whether the model in use is untrained."""
    untrained = queries.untrained_models_in_use(db)
    return {"notice": TRIAGE_NOTICE, "untrained_model": untrained,
            "model_warning": UNTRAINED_NOTICE if untrained else None}


def with_viewer_url(item: dict[str, Any], template: str) -> dict[str, Any]:
    """``item`` (a worklist entry or study as a dict) with its ``viewer_url`` (None without TRIAGE_VIEWER_URL)."""
    item["viewer_url"] = viewer_url(template, item["study_uid"], item.get("accession_number"), item.get("patient_id"))
    return item


def study_body(db: Session, study_uid: str, prefix: str,
               borderline_band: float = queries.DEFAULT_BORDERLINE_BAND, viewer_url_template: str = ""
               ) -> dict[str, Any]:
    detail = queries.study_detail(db, study_uid, borderline_band=borderline_band)
    if detail is None:
        raise Problem(404, "study not found")
    with_viewer_url(detail, viewer_url_template)
    detail.update(notices(db))
    detail["reports"] = reports.study_reports(db, study_uid)
    for instance in detail["instances"]:
        sop = instance["sop_instance_uid"]
        instance["preview_url"] = image_url(prefix, study_uid, sop, "preview") if instance["has_preview"] else None
        instance["heatmap_url"] = image_url(prefix, study_uid, sop, "heatmap") if instance["has_heatmap"] else None
    return detail

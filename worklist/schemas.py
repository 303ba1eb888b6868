"""What the REST API returns, as pydantic models: FastAPI documents them in the OpenAPI schema."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class WorklistItem(BaseModel):
    study_uid: str
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: date | None
    study_description: str
    status: Literal["PENDING", "DONE", "NOT_ANALYSED"]
    state: Literal["pending", "done", "not_analysed", "failed"] = Field(
        description="What the page shows: not_analysed when nothing could be scored, failed when every image "
                    "failed (no or unreadable pixels)")
    flag: bool = Field(description="The study score reached the threshold: it rises to the top. Triage support, "
                                   "not a diagnosis")
    score: float | None = Field(description="Highest score of the study's scored frontal images")
    threshold: float | None
    reason: str | None = Field(description="Why the study was not analysed (a stable code, e.g. LATERAL_VIEW)")
    model_version: str | None
    model_sha256: str | None
    model_trained: bool | None
    received_at: datetime
    flagged_at: datetime | None = Field(description="When the study's result became final")
    time_to_flag_s: float | None = Field(description="Seconds from the study's latest receive to its final result")
    images: int
    failed_images: int
    read: bool
    read_at: datetime | None
    read_by: str | None


class Worklist(BaseModel):
    notice: str
    untrained_model: bool
    model_warning: str | None
    total: int = Field(description="Studies matching the filters (all pages)")
    limit: int
    offset: int
    sort: str
    items: list[WorklistItem]


class WorklistVersion(BaseModel):
    version: str = Field(description="Changes whenever anything on the worklist may have changed")


class StudyVersion(BaseModel):
    version: str = Field(description="Changes whenever anything on the study's page may have changed")


class InstanceItem(BaseModel):
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    view_position: str
    body_part: str
    status: Literal["RECEIVED", "QUEUED", "PROCESSING", "DONE", "NOT_ANALYSED", "FAILED"]
    reason: str | None
    detail: str | None
    assumptions: str | None
    score: float | None
    threshold: float | None
    flag: bool = Field(description="This image's score reached its threshold")
    model_version: str | None
    model_sha256: str | None
    receive_count: int
    received_at: datetime
    finished_at: datetime | None
    has_preview: bool
    has_heatmap: bool
    preview_url: str | None
    heatmap_url: str | None


class DeliveryItem(BaseModel):
    kind: Literal["dicom", "stow", "hl7"] = Field(description="dicom: C-STORE of the SR; stow: DICOMweb STOW-RS; "
                                                              "hl7: ORU^R01 over MLLP")
    destination: str = Field(description="AET@host:port, the STOW URL, or host:port", examples=["PACS@10.0.0.5:104"])
    status: Literal["PENDING", "SENDING", "DELIVERED", "DEAD", "SUPERSEDED"] = Field(
        description="DEAD: every attempt failed (the dead-letter record); SUPERSEDED: a newer version replaced it "
                    "before it was delivered")
    attempts: int
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next")
    delivered_at: datetime | None
    last_error: str | None = Field(description="Why the last attempt failed (technical, no patient data)")


class ReportItem(BaseModel):
    version: int = Field(description="1, 2, …: a later version replaces the earlier one in the PACS and the RIS")
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    created_at: datetime
    flag: bool | None
    score: float | None
    deliveries: list[DeliveryItem]


class StudyDetail(WorklistItem):
    notice: str
    untrained_model: bool
    model_warning: str | None
    instances: list[InstanceItem]
    reports: list[ReportItem] = Field(description="The result as sent back to the PACS/RIS, newest version first")


class ReadState(BaseModel):
    study_uid: str
    read: bool
    read_at: datetime | None
    read_by: str | None


class AuditEvent(BaseModel):
    at: datetime
    actor: str = Field(description="The token's name, or loopback-demo when no token is configured")
    action: str = Field(description="view, api, image, list, mark_read or mark_unread")
    study_uid: str | None
    detail: str | None


class ModelVersion(BaseModel):
    sha256: str
    version: str
    trained: bool
    threshold: float
    registered_at: datetime
    studies: int = Field(description="Studies whose current result came from this model")
    metadata: dict[str, Any]


class Models(BaseModel):
    notice: str
    untrained_model: bool
    model_warning: str | None
    model_card_available: bool
    models: list[ModelVersion]


class Health(BaseModel):
    status: Literal["ok"]
    workers_alive: int = Field(description="Worker processes that wrote their heartbeat in the last 15 s; 0 means "
                                           "received images are not being classified")
    worker_last_seen_s: float | None = Field(description="Seconds since any worker was last seen; null = never")
    worker_restarts: int | None = Field(None, description="Times `cxr-triage serve` restarted its worker (single-"
                                                          "machine form only)")

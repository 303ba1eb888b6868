"""What the REST API returns, as pydantic models: FastAPI documents them in the OpenAPI schema.

The models of database rows read them by attribute (``from_attributes``): ``WorklistItem.model_validate(entry)`` takes
a ``db.worklist.WorklistEntry`` as it is; ``worklist.views`` adds the links a row does not carry."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worklist.presentation import TRIAGE_NOTICE


class WorklistItem(BaseModel):
    """One study on the worklist (the list's rows; the study endpoint adds its images and reports)."""

    model_config = ConfigDict(from_attributes=True)

    study_uid: str = Field(description="Study Instance UID", examples=["1.2.826.0.1.3680043.8.498.1"])
    patient_name: str = Field(description="Patient's name as the DICOM header has it (PN, `^` between parts)")
    patient_id: str = Field(description="Patient ID from the header, verbatim")
    accession_number: str = Field(description="Accession number from the header (the RIS order)")
    study_date: date | None = Field(description="Study Date from the header; null when absent or unreadable")
    study_description: str = Field(description="Study Description from the header")
    status: Literal["PENDING", "DONE", "NOT_ANALYSED"] = Field(
        description="PENDING: images still being received or classified; DONE: scored; NOT_ANALYSED: no image "
                    "could be scored (see reason)")
    state: Literal["pending", "done", "not_analysed", "failed"] = Field(
        description="What the page shows: not_analysed when nothing could be scored, failed when every image "
                    "failed (no or unreadable pixels)")
    flag: bool = Field(description="The study score reached the threshold: it rises to the top. Triage support, "
                                   "not a diagnosis")
    score: float | None = Field(description="Highest score of the study's scored frontal images")
    threshold: float | None = Field(description="The operating threshold the score was compared with (the "
                                                "checkpoint's, or the site's TRIAGE_THRESHOLD)")
    reason: str | None = Field(description="Why the study was not analysed (a stable code, e.g. LATERAL_VIEW)")
    model_version: str | None = Field(description="Version of the model whose result the study carries")
    model_sha256: str | None = Field(description="sha256 of that model's checkpoint: the model's identity")
    model_trained: bool | None = Field(description="false: the model has no training metadata and its scores are "
                                                   "meaningless; null: no result yet")
    received_at: datetime = Field(description="When the study's first image was received (UTC)")
    flagged_at: datetime | None = Field(description="When the study's result became final")
    time_to_flag_s: float | None = Field(description="Seconds from the study's latest receive to its final result")
    images: int = Field(description="Images received for the study")
    failed_images: int = Field(description="Images that ended FAILED (no or unreadable pixel data)")
    read: bool = Field(description="A radiologist marked the study read (it moves down, never off the list)")
    read_at: datetime | None = Field(description="When it was marked read (UTC)")
    read_by: str | None = Field(description="Who marked it read (the token's name)")
    patient_age_years: int | None = Field(
        description="Age in whole years on the study date: PatientAge, else birth date to study date; null when "
                    "the images do not say or the value is absurd")
    patient_sex: Literal["M", "F", "O"] | None = Field(description="PatientSex; null when absent or not M, F or O")
    modality: str | None = Field(description="Modality of the study's images (CR, DX…)", examples=["CR"])
    institution: str | None = Field(description="InstitutionName of the images")
    station: str | None = Field(description="StationName of the images (the X-ray room or device)")
    priority: Literal["STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW"] | None = Field(
        description="The order's priority: RequestedProcedurePriority (0040,1003) of the images (also inside "
                    "RequestAttributesSequence), else the sender's rule (TRIAGE_PRIORITY_BY_CALLING_AET). STAT "
                    "studies come first in their group of the default order")
    borderline: bool = Field(
        description="Not flagged, but the score lies within the borderline band below the threshold "
                    "(threshold - TRIAGE_BORDERLINE_BAND <= score < threshold, band 0.05 by default): read with care")
    outside_validated_population: bool | None = Field(
        description="The patient's age lies outside every age range the model was validated on (e.g. a child "
                    "when it was validated on adults only): its score is less reliable. null when the age is "
                    "unknown or the model records no validated population")
    outside_validated_population_reason: str | None = Field(
        description="Why the study lies outside the validated population, in words")
    waiting_seconds: float | None = Field(description="Unread studies: seconds since the study was received; null "
                                                      "once read")
    viewer_url: str | None = Field(
        description="The study in the site's image viewer (TRIAGE_VIEWER_URL with {study_uid}, {accession} and "
                    "{patient_id} replaced by the study's values, URL-encoded); null when no viewer is configured",
        examples=["https://pacs.example/viewer?StudyInstanceUIDs=1.2.826.0.1.3680043.8.498.1"])


NOTICE = Field(description="What every answer says of itself: triage support, not a diagnosis",
               examples=[TRIAGE_NOTICE])
UNTRAINED = Field(description="true while a model without training metadata is in use: scores are meaningless")
MODEL_WARNING = Field(description="The warning to show while an untrained model is in use; null otherwise")


class Worklist(BaseModel):
    """One page of the prioritized worklist."""

    notice: str = NOTICE
    untrained_model: bool = UNTRAINED
    model_warning: str | None = MODEL_WARNING
    total: int = Field(description="Studies matching the filters (all pages)", examples=[42])
    limit: int = Field(description="Page size asked for", examples=[200])
    offset: int = Field(description="Studies skipped before this page", examples=[0])
    sort: str = Field(description="The order used (see the sort parameter)", examples=["priority"])
    items: list[WorklistItem] = Field(description="This page's studies, in the order asked for")


UNREAD_FLAGGED = Field(description="Unread flagged studies on the whole worklist (no filter): what the pages' tab "
                       "title and new-flag alerts count", examples=[3], ge=0)


class WorklistVersion(BaseModel):
    version: str = Field(description="Changes whenever anything on the worklist may have changed")
    unread_flagged: int = UNREAD_FLAGGED


class StudyVersion(BaseModel):
    version: str = Field(description="Changes whenever anything on the study's page may have changed")
    unread_flagged: int = UNREAD_FLAGGED


class InstanceItem(BaseModel):
    """One received image and what became of it."""

    model_config = ConfigDict(from_attributes=True)

    sop_instance_uid: str = Field(description="SOP Instance UID of the image")
    sop_class_uid: str = Field(description="SOP Class UID (CR, DX or Secondary Capture storage)",
                               examples=["1.2.840.10008.5.1.4.1.1.1"])
    series_instance_uid: str = Field(description="Series Instance UID")
    transfer_syntax_uid: str = Field(description="Transfer syntax the file was received in (kept as received)")
    modality: str = Field(description="Modality from the header", examples=["CR"])
    view_position: str = Field(description="ViewPosition from the header (PA, AP, LL…)", examples=["PA"])
    body_part: str = Field(description="BodyPartExamined from the header", examples=["CHEST"])
    status: Literal["RECEIVED", "QUEUED", "PROCESSING", "DONE", "NOT_ANALYSED", "FAILED"] = Field(
        description="RECEIVED, QUEUED, PROCESSING: not finished; DONE: scored; NOT_ANALYSED: not something the "
                    "model may score; FAILED: a permanent error (the dead-letter record)")
    reason: str | None = Field(description="Stable code for NOT_ANALYSED or FAILED (e.g. LATERAL_VIEW, "
                                           "NO_PIXEL_DATA)")
    detail: str | None = Field(description="Technical detail of the reason (no patient data)")
    assumptions: str | None = Field(description="What was assumed for tags the image lacks (e.g. a missing view)")
    score: float | None = Field(description="The model's score for this image, 0 to 1", examples=[0.83])
    threshold: float | None = Field(description="The threshold this image's score was compared with")
    flag: bool = Field(description="This image's score reached its threshold")
    model_version: str | None = Field(description="Version of the model that scored the image")
    model_sha256: str | None = Field(description="sha256 of that model's checkpoint")
    receive_count: int = Field(description="How often this SOP Instance UID was received (a resend replaces the "
                                           "copy and is processed again)")
    received_at: datetime = Field(description="When the current copy was received (UTC)")
    finished_at: datetime | None = Field(description="When its processing ended (UTC); null while unfinished")
    has_preview: bool = Field(description="A preview PNG was written for it")
    has_heatmap: bool = Field(description="A heat-map PNG was written for it")
    has_display: bool = Field(description="The display image was kept at full resolution (PNG) for the zoom")
    preview_url: str | None = Field(description="Where to get the preview PNG; null when there is none")
    heatmap_url: str | None = Field(description="Where to get the heat-map PNG; null when there is none")
    display_url: str | None = Field(description="Where to get the display image at full resolution (PNG); null "
                                                "when there is none")
    purged_at: datetime | None = Field(None, description="When the retention policy (TRIAGE_RETENTION_DAYS) removed "
                                                         "the image's pictures and spooled copy (UTC); null while "
                                                         "they are kept")


class DeliveryItem(BaseModel):
    kind: Literal["dicom", "stow", "hl7"] = Field(description="dicom: C-STORE of the SR; stow: DICOMweb STOW-RS; "
                                                              "hl7: ORU^R01 over MLLP")
    destination: str = Field(description="AET@host:port, the STOW URL, or host:port", examples=["PACS@10.0.0.5:104"])
    status: Literal["PENDING", "SENDING", "DELIVERED", "DEAD", "SUPERSEDED"] = Field(
        description="DEAD: every attempt failed (the dead-letter record); SUPERSEDED: a newer version replaced it "
                    "before it was delivered")
    attempts: int = Field(description="Sends tried so far")
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next")
    delivered_at: datetime | None = Field(description="When the destination acknowledged it (UTC)")
    last_error: str | None = Field(description="Why the last attempt failed (technical, no patient data)")


class ReportItem(BaseModel):
    version: int = Field(description="1, 2, …: a later version replaces the earlier one in the PACS and the RIS")
    sr_sop_instance_uid: str = Field(description="SOP Instance UID of this version's structured report")
    sr_series_instance_uid: str = Field(description="Series of the reports (the same for every version)")
    created_at: datetime = Field(description="When this version was made (UTC)")
    flag: bool | None = Field(description="The flag this version reports; null when not analysed")
    score: float | None = Field(description="The study score this version reports")
    deliveries: list[DeliveryItem] = Field(description="One per configured destination")


class StudyDetail(WorklistItem):
    """One study with its images and the reports sent back."""

    notice: str = NOTICE
    untrained_model: bool = UNTRAINED
    model_warning: str | None = MODEL_WARNING
    instances: list[InstanceItem] = Field(description="Every image received for the study, in arrival order")
    reports: list[ReportItem] = Field(description="The result as sent back to the PACS/RIS, newest version first")


class ReadState(BaseModel):
    """A study's read state after a change."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"study_uid": "1.2.826.0.1.3680043.8.498.1", "read": True, "read_at": "2025-01-31T08:15:00Z",
         "read_by": "alice"}]})

    study_uid: str = Field(description="Study Instance UID")
    read: bool = Field(description="Whether the study is now marked read")
    read_at: datetime | None = Field(description="When it was marked read (UTC); null when unread")
    read_by: str | None = Field(description="Who marked it read; null when unread")


class AuditEvent(BaseModel):
    """One recorded read of, or change to, a study."""

    model_config = ConfigDict(from_attributes=True)

    at: datetime = Field(description="When it happened (UTC)")
    actor: str = Field(description="The token's name, or loopback-demo when no token is configured")
    action: str = Field(description="view, api, image, list, mark_read or mark_unread")
    study_uid: str | None = Field(description="The study concerned; null for list reads")
    detail: str | None = Field(description="The route or SOP Instance UID (never patient data)")


class ModelVersion(BaseModel):
    """A model that produced results."""

    model_config = ConfigDict(from_attributes=True)

    sha256: str = Field(description="sha256 of the checkpoint file: the model's identity, recorded with every "
                                    "result")
    version: str = Field(description="The checkpoint's version string", examples=["resnet50-cxr-2025.01"])
    trained: bool = Field(description="false: no training metadata, scores are meaningless")
    threshold: float = Field(description="The operating threshold in use with this model", examples=[0.42])
    registered_at: datetime = Field(description="When a worker first loaded it (UTC)")
    studies: int = Field(description="Studies whose current result came from this model")
    metadata: dict[str, Any] = Field(description="The checkpoint's metadata: architecture, input size, "
                                                 "preprocessing, training data, validation metrics and population")


class Models(BaseModel):
    """The models in use and whether the model card is available."""

    notice: str = NOTICE
    untrained_model: bool = UNTRAINED
    model_warning: str | None = MODEL_WARNING
    model_card_available: bool = Field(description="GET /api/model-card has a card to return")
    models: list[ModelVersion] = Field(description="Every model that produced results, newest first")


class HealthChecks(BaseModel):
    """Each part the system needs; any one "down" makes /healthz answer 503."""

    database: Literal["ok", "down"] = Field(description="The database answers a query")
    broker: Literal["ok", "down", "not_checked"] = Field(
        description="The Celery broker takes a connection (Redis, or the embedded queue's folder); not_checked "
                    "when the server was started without a broker check")
    workers: Literal["ok", "down", "none_seen"] = Field(
        description="ok: a worker's heartbeat is recent; down: workers ran but none beat in the last 15 s (images "
                    "are not being classified); none_seen: no worker has run against this database yet (a fresh "
                    "installation whose web server started first)")
    spool_disk: Literal["ok", "down", "not_checked"] = Field(
        description="down: the spool's disk is at or above its watermark and new images are refused (0xA700)")


class Health(BaseModel):
    """Every check passed (otherwise the answer is a 503 problem that carries the same checks)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "ok", "checks": {"database": "ok", "broker": "ok", "workers": "ok", "spool_disk": "ok"},
         "workers_alive": 2, "worker_last_seen_s": 1.4, "worker_restarts": None, "spool_disk_used_percent": 37.5,
         "disk_watermark_percent": 90.0}]})

    status: Literal["ok"] = Field(description="Always ok in a 200 answer")
    checks: HealthChecks = Field(description="The state of each part")
    workers_alive: int = Field(description="Worker processes that wrote their heartbeat in the last 15 s; 0 means "
                                           "received images are not being classified")
    worker_last_seen_s: float | None = Field(description="Seconds since any worker was last seen; null = never")
    worker_restarts: int | None = Field(None, description="Times `cxr-triage serve` restarted its worker (single-"
                                                          "machine form only)")
    spool_disk_used_percent: float | None = Field(None, description="Share of the spool's disk in use, percent; "
                                                                    "null when not checked")
    disk_watermark_percent: float = Field(description="At or above this share C-STOREs are refused "
                                                      "(TRIAGE_DISK_WATERMARK_PERCENT)")


class ProblemError(BaseModel):
    """One invalid parameter of a 422 answer."""

    loc: list[str | int] = Field(description="Where the value is: query, path or body, then its name",
                                 examples=[["query", "limit"]])
    msg: str = Field(description="What is wrong with it", examples=["Input should be less than or equal to 1000"])


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json): the shape of every error this API answers."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "study not found",
         "instance": "/api/studies/1.2.826.0.1.3680043.8.498.1"}]})

    type: str = Field("about:blank", description="A URI naming the kind of problem; about:blank when the status "
                                                 "says it all")
    title: str = Field(description="Short summary: the HTTP status phrase for about:blank", examples=["Not Found"])
    status: int = Field(description="The HTTP status code, repeated", examples=[404])
    detail: str | None = Field(None, description="What went wrong this time, in words (no patient data)")
    instance: str = Field(description="The path the request went to")
    errors: list[ProblemError] | None = Field(None, description="422 only: each invalid parameter")
    checks: HealthChecks | None = Field(None, description="/healthz 503 only: which part is down")
    purged_at: str | None = Field(None, description="410 only: when the retention policy removed the image's "
                                                    "pictures (UTC, ISO 8601)")

"""The one settings object, read from the environment (prefix ``TRIAGE_``) and an optional ``.env`` file."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a deployment; a fleet differs from a single machine only in these values."""

    model_config = SettingsConfigDict(env_prefix="TRIAGE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="Spool, SQLite files, embedded queue, model cache.")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite file in data_dir.")
    broker_url: str = Field("", description="Celery broker URL; empty = embedded filesystem queue in data_dir.")

    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_ae_title: str = "CXR_TRIAGE"
    allowed_calling_aets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; empty = any AE title, but only from loopback.",
    )
    priority_by_calling_aet: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Order priority for images that carry none, by calling AE title: 'ER_CR=STAT,ICU_DX=HIGH' "
                    "(STAT, HIGH, ROUTINE, MEDIUM or LOW); a priority in the file always wins.")
    accept_secondary_capture: bool = True
    dicom_max_associations: int = Field(25, ge=1, description="Concurrent DICOM associations; more are rejected.")
    dicom_max_pdu_size: int = Field(4 * 1024 * 1024, ge=0, description="Largest PDU we accept, in bytes (0 = no "
                                    "limit); with the data-stall timeout it bounds how slow a link may be.")
    dicom_acse_timeout_s: float = Field(30.0, gt=0, description="Association negotiation timeout.")
    dicom_dimse_timeout_s: float = Field(30.0, gt=0, description="Timeout waiting for a DIMSE message.")
    dicom_network_timeout_s: float = Field(60.0, gt=0, description="An idle association is released after this.")
    dicom_tls_cert: Path | None = Field(None, description="PEM certificate: with one the listener speaks only TLS.")
    dicom_tls_key: Path | None = Field(None, description="PEM private key of the certificate (if not in its file).")
    dicom_tls_ca: Path | None = Field(
        None, description="PEM CA certificates: callers must present a certificate one of them signed.")
    dicom_data_stall_timeout_s: float = Field(
        60.0, gt=0, description="An association that completes no PDU for this long is aborted (slow-drip senders).")

    web_host: str = "127.0.0.1"
    web_port: int = 8000
    api_token: str = Field("", description="Bearer token for /api; required when the web server leaves loopback.")
    web_tls_cert: Path | None = Field(None, description="PEM certificate: with one the web server speaks HTTPS only.")
    web_tls_key: Path | None = Field(None, description="PEM private key of the web certificate.")
    queue: str = Field("triage", description="Celery queue the listener publishes to and workers consume.")

    model: str = Field("", description="Checkpoint path; empty = the shipped default.")
    threshold: float | None = Field(None, description="Site override of the checkpoint's operating threshold.")
    borderline_band: float = Field(
        0.05, ge=0, lt=1, description="A study scoring within this much below the threshold (threshold - band <= "
                                      "score < threshold) is marked borderline on the worklist; 0 = never.")
    device: str = Field("", description="torch device for inference; empty = cuda when available, else cpu.")

    sweep_interval_s: float = Field(10.0, description="How often the outbox sweeper looks for stranded instances.")
    requeue_after_s: float = Field(
        600.0, description="An instance queued or in progress this long without a result is enqueued again."
    )
    task_max_retries: int = Field(8, ge=0, description="Retries of a task while the database is unreachable "
                                                        "(exponential back-off, at most 300 s apart).")
    retention_days: int = Field(
        0, ge=0, description="Days a read study's pictures are kept after they were processed: then the spooled "
                             "DICOM copy, the preview, heat map and full-size PNGs are deleted (the rows and results "
                             "stay); 0 = keep everything forever. Unread studies, FAILED images and reports still "
                             "being delivered keep theirs.")
    disk_watermark_percent: float = Field(
        90.0, gt=0, le=100, description="Above this share of the spool's disk in use, C-STOREs are refused with "
                                        "0xA700 (the sender retries) and /healthz answers 503.")
    result_destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="PACS destinations of the triage SR, comma-separated AET@host:port, "
                                          "C-STOREd from dicom_ae_title; empty = no SR sent by C-STORE.")
    result_stow_url: str = Field("", description="DICOMweb base URL (STOW-RS) that also receives the SR; empty = none.")
    result_quiet_s: float = Field(30.0, ge=0, description="A study is reported once no new image of it arrived for "
                                                          "this long; a later change sends a new SR version.")
    result_heatmap: bool = Field(False, description="Also send the heat map as a Secondary Capture labelled not for "
                                                    "diagnosis.")
    result_max_attempts: int = Field(10, ge=1, description="Delivery attempts per destination before the delivery "
                                                           "is dead-lettered (shown on the study page).")
    result_retry_base_s: float = Field(10.0, gt=0, description="First retry delay; doubles per attempt, at most "
                                                               "15 minutes.")
    hl7_destination: str = Field("", description="host:port of the RIS's MLLP listener for the HL7 ORU^R01; "
                                                 "empty = no HL7.")
    hl7_sending_facility: str = ""
    hl7_receiving_application: str = ""
    hl7_receiving_facility: str = ""
    log_level: str = "INFO"
    timezone: str = Field("UTC", description="IANA time zone of the site (e.g. Europe/Berlin): times on the page "
                                             "and in the CLI, and the days of the date filters. Stored times are UTC.")
    api_tokens: str = Field(
        "", description="More bearer tokens, each with a name the audit table records: 'alice=TOKEN,bob=TOKEN'.")
    viewer_url: str = Field(
        "", description="The site's image viewer, as a URL template: {study_uid}, {accession} and {patient_id} are "
                        "replaced by the study's values, URL-encoded (e.g. https://pacs.example/viewer?"
                        "StudyInstanceUIDs={study_uid}); every worklist row and study page then links to it, and "
                        "the API's items carry viewer_url. Empty = no viewer links.")

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _split_aets(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("priority_by_calling_aet", mode="before")
    @classmethod
    def _split_priority_rules(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        rules: dict[str, str] = {}
        for part in (part.strip() for part in value.split(",")):
            aet, sep, priority = part.partition("=")
            if part and not (sep and aet.strip()):
                raise ValueError(f"{part!r} is not AET=PRIORITY")
            if part:
                rules[aet.strip()] = priority
        return rules

    @field_validator("priority_by_calling_aet")
    @classmethod
    def _known_priorities(cls, value: dict[str, str]) -> dict[str, str]:
        from dicom_io.header import PRIORITIES, normalise_priority

        rules = {}
        for aet, priority in value.items():
            known = normalise_priority(priority)
            if known is None or len(aet) > 16:
                raise ValueError(f"{aet}={priority}: the AE title has at most 16 characters and the priority is one "
                                 f"of {', '.join(PRIORITIES)}")
            rules[aet] = known
        return rules

    @field_validator("result_destinations", mode="before")
    @classmethod
    def _split_destinations(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("result_destinations")
    @classmethod
    def _valid_destinations(cls, value: list[str]) -> list[str]:
        from worker.config import DicomDestination

        return [str(DicomDestination.parse(part)) for part in value]

    @field_validator("hl7_destination")
    @classmethod
    def _valid_hl7_destination(cls, value: str) -> str:
        from worker.config import HostPort

        return str(HostPort.parse(value)) if value.strip() else ""

    @field_validator("result_stow_url")
    @classmethod
    def _valid_stow_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("viewer_url")
    @classmethod
    def _valid_viewer_url(cls, value: str) -> str:
        from worklist.presentation import check_viewer_template

        return check_viewer_template(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as Europe/Berlin or UTC") from None
        return value

    @cached_property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @cached_property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'triage.sqlite3').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost//"

    @property
    def queue_dir(self) -> Path:
        return (self.data_dir / "queue").resolve()

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.spool_dir, self.model_cache_dir, self.queue_dir):
            path.mkdir(parents=True, exist_ok=True)

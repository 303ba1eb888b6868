"""What the worker side needs to know, handed over by the composition root (``triage``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WorkerConfig:
    database_url: str
    broker_url: str
    spool_dir: Path
    rejected_dir: Path
    queue_dir: Path
    model_path: Path | None  # None = the shipped default
    model_cache_dir: Path
    queue: str = "triage"
    device: str = ""
    threshold: float | None = None  # site override of the checkpoint's threshold
    requeue_after_s: float = 600.0
    received_grace_s: float = 5.0
    sweep_interval_s: float = 10.0
    max_attempts: int = 3  # claims per received copy before it is a poison message
    max_retries: int = 8  # task retries while the database is away (back-off up to 300 s between tries)
    previews_dir: Path | None = None  # where the worker writes preview and heat map PNGs; None = none written
    disk_watermark_percent: float = 90.0  # above this share of the spool's disk in use, C-STOREs get 0xA700
    # Read studies' pixels (spool copy, preview, heat map, display PNG) are deleted this many days after they were
    # processed; 0 = kept forever (worker.retention).
    retention_days: int = 0
    retention_interval_s: float = 3600.0  # how often the ingest service looks for expired pixels
    # Calling AE title → order priority (STAT, HIGH…) for images that carry none (an ER's CR room sends STAT).
    priority_by_calling_aet: dict[str, str] = field(default_factory=dict)

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem")


def _host(host: str) -> str:
    """An IPv6 address in brackets, so the port stays readable."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class HostPort:
    """A network peer written ``host:port`` (the RIS's MLLP listener; the address part of a DICOM destination)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        host, colon, port = text.strip().rpartition(":")
        if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{text!r} is not host:port")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class DicomDestination:
    """A PACS (or any storage SCP) the report is C-STOREd to, written ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DicomDestination:
        aet, sep, address = text.strip().partition("@")
        try:
            where = HostPort.parse(address)
        except ValueError:
            where = None
        if not (sep and aet and where and len(aet) <= 16):
            raise ValueError(f"{text!r} is not AET@host:port (AE title of at most 16 characters, port 1-65535)")
        return cls(aet, where.host, where.port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class ReportingConfig:
    """Where results go back to (PACS by C-STORE or STOW-RS, RIS by HL7) and how patiently."""

    reports_dir: Path  # the SR (and heat-map) files, written once per report version
    dicom_destinations: tuple[DicomDestination, ...] = ()
    stow_url: str = ""
    hl7_destination: HostPort | None = None
    calling_ae_title: str = "CXR_TRIAGE"
    quiet_s: float = 30.0  # no new image of the study for this long before its result is reported
    heatmap: bool = False  # also send the heat map as a Secondary Capture, labelled not for diagnosis
    max_attempts: int = 10  # then the delivery is dead-lettered
    retry_base_s: float = 10.0  # back-off: base × 2^(attempt-1), at most retry_max_s
    retry_max_s: float = 900.0
    interval_s: float = 2.0  # how often the reporter looks for due studies and deliveries
    send_timeout_s: float = 30.0
    hl7_sending_facility: str = ""
    hl7_receiving_application: str = ""
    hl7_receiving_facility: str = ""
    software_version: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.dicom_destinations or self.stow_url or self.hl7_destination)

    def destinations(self) -> list[tuple[str, str]]:
        """(kind, destination) for every configured destination: one delivery row each."""
        found = [("dicom", str(d)) for d in self.dicom_destinations]
        if self.stow_url:
            found.append(("stow", self.stow_url))
        if self.hl7_destination is not None:
            found.append(("hl7", str(self.hl7_destination)))
        return found

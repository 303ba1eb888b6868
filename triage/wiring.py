"""Wiring: settings → the configuration objects of the parts (the only place that knows both sides), the settings
as a child process's environment, and process-wide logging."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from ssl import SSLContext

from dicom_io.listener import ListenerConfig
from triage.settings import Settings
from worker.config import DicomDestination, HostPort, ReportingConfig, WorkerConfig


def worker_config(settings: Settings) -> WorkerConfig:
    settings.ensure_dirs()
    return WorkerConfig(
        database_url=settings.effective_database_url,
        broker_url=settings.effective_broker_url,
        spool_dir=settings.spool_dir.resolve(),
        rejected_dir=(settings.data_dir / "rejected").resolve(),
        queue_dir=settings.queue_dir,
        model_path=Path(settings.model).resolve() if settings.model else None,
        model_cache_dir=settings.model_cache_dir.resolve(),
        queue=settings.queue,
        device=settings.device,
        threshold=settings.threshold,
        requeue_after_s=settings.requeue_after_s,
        sweep_interval_s=settings.sweep_interval_s,
        max_retries=settings.task_max_retries,
        previews_dir=(settings.data_dir / "previews").resolve(),
        disk_watermark_percent=settings.disk_watermark_percent,
        retention_days=settings.retention_days,
        priority_by_calling_aet=dict(settings.priority_by_calling_aet),
    )


def package_version() -> str:
    """The installed cxr-triage version (the SR's software version, /metrics' build info)."""
    try:
        return version("cxr-triage")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def reporting_config(settings: Settings) -> ReportingConfig:
    return ReportingConfig(
        reports_dir=(settings.data_dir / "reports").resolve(),
        dicom_destinations=tuple(DicomDestination.parse(text) for text in settings.result_destinations),
        stow_url=settings.result_stow_url,
        hl7_destination=HostPort.parse(settings.hl7_destination) if settings.hl7_destination else None,
        calling_ae_title=settings.dicom_ae_title,
        quiet_s=settings.result_quiet_s,
        heatmap=settings.result_heatmap,
        max_attempts=settings.result_max_attempts,
        retry_base_s=settings.result_retry_base_s,
        hl7_sending_facility=settings.hl7_sending_facility,
        hl7_receiving_application=settings.hl7_receiving_application,
        hl7_receiving_facility=settings.hl7_receiving_facility,
        software_version=package_version(),
    )


def listener_config(settings: Settings) -> ListenerConfig:
    return ListenerConfig(
        ae_title=settings.dicom_ae_title,
        host=settings.dicom_host,
        port=settings.dicom_port,
        allowed_calling_aets=list(settings.allowed_calling_aets),
        accept_secondary_capture=settings.accept_secondary_capture,
        max_associations=settings.dicom_max_associations,
        max_pdu_size=settings.dicom_max_pdu_size,
        acse_timeout_s=settings.dicom_acse_timeout_s,
        dimse_timeout_s=settings.dicom_dimse_timeout_s,
        network_timeout_s=settings.dicom_network_timeout_s,
        data_stall_timeout_s=settings.dicom_data_stall_timeout_s,
        tls_cert=settings.dicom_tls_cert,
        tls_key=settings.dicom_tls_key,
        tls_ca=settings.dicom_tls_ca,
    )


def listener_client_tls(settings: Settings) -> SSLContext | None:
    """How our own SCUs (the demo, the benchmark) reach our listener: TLS when it speaks TLS, trusting its CA
    (or its own certificate) and presenting its certificate when it asks callers for one."""
    from dicom_io.tls import client_context

    if settings.dicom_tls_cert is None:
        return None
    trusted = settings.dicom_tls_ca or settings.dicom_tls_cert
    if settings.dicom_tls_ca is None:
        return client_context(trusted)
    return client_context(trusted, settings.dicom_tls_cert, settings.dicom_tls_key)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as TRIAGE_* variables, so a child process sees exactly what this one resolved."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, dict):
            value = ",".join(f"{key}={item}" for key, item in value.items())
        elif isinstance(value, Path):
            value = str(value.resolve())
        env[f"TRIAGE_{name.upper()}"] = str(value)
    return env


class DropQueryStrings(logging.Filter):
    """uvicorn's access log line carries the full path with its query string, and a worklist search term is often a
    patient's name or ID: keep the path, drop the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return True


def configure_logging(level: str) -> None:
    """Process-wide logging. Header values are not validated while pydicom reads them: its validation warnings
    quote the raw bytes of the offending element, which can be a name, an ID or a birth date."""
    from pydicom import config as pydicom_config

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    logging.getLogger("uvicorn.access").addFilter(DropQueryStrings())

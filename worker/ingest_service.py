"""The listener side as one long-running part: the DICOM listener, the file importer, the outbox sweeper, when
results go back the reporter, and with TRIAGE_RETENTION_DAYS the retention sweeper. ``cxr-triage listen`` and
``serve`` run it."""

from __future__ import annotations

import logging
from pathlib import Path

from db.engine import open_database
from db.ingest import WorkItem
from dicom_io.files import encoded_file
from dicom_io.listener import Listener, ListenerConfig, OutOfResources, ReceivedInstance, parse_received
from dicom_io.spool import Spool
from worker.celery_app import create_celery
from worker.config import ReportingConfig, WorkerConfig
from worker.ingest import Ingestor
from worker.outbox import OutboxSweeper, TaskPublisher
from worker.retention import RetentionSweeper

log = logging.getLogger(__name__)


class IngestService:
    """Everything that accepts instances: the DICOM listener, the file importer and the outbox sweeper (and the
    reporter and the retention sweeper, which share its process)."""

    def __init__(self, config: WorkerConfig, listener_config: ListenerConfig | None = None,
                 reporting: ReportingConfig | None = None) -> None:
        self.config = config
        self.engine, self.sessions = open_database(config.database_url)
        self.celery = create_celery(config)
        self.publisher = TaskPublisher(self.celery, self.sessions)
        self.ingestor = Ingestor(Spool(config.spool_dir), self.sessions, config.rejected_dir, self.publisher,
                                 config.disk_watermark_percent, config.priority_by_calling_aet)
        self.sweeper = OutboxSweeper(config, self.sessions, self.publisher)
        self.listener = Listener(listener_config, self.ingestor) if listener_config else None
        self.reporter = None
        if reporting is not None and reporting.enabled:
            from worker.reporting import Reporter  # highdicom and the HL7 libraries only where results go back

            self.reporter = Reporter(reporting, self.sessions)
        self.retention = None  # hourly, only with a retention set
        if config.retention_days > 0:  # where reports go out, a study waiting for its report keeps its pixels
            self.retention = RetentionSweeper(config, self.sessions, keep_report_due=self.reporter is not None)

    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()
        self.sweeper.sweep_once()  # whatever a previous run left behind goes out first
        self.sweeper.start()
        if self.reporter is not None:
            self.reporter.start()
        if self.retention is not None:
            self.retention.start()

    def stop(self) -> None:
        if self.retention is not None:
            self.retention.stop()
        if self.reporter is not None:
            self.reporter.stop()
        self.sweeper.stop()
        if self.listener is not None:
            self.listener.stop()
        self.engine.dispose()

    def import_file(self, path: Path) -> WorkItem | None:
        """Backfill one file through the same commit point as a C-STORE; None when it is not DICOM we can file."""
        try:
            data = encoded_file(path)
            header = parse_received(data)
        except Exception as exc:
            log.warning("import of %s refused: %s", path.name, exc)
            return None
        try:
            return self.ingestor.commit(ReceivedInstance(data=data, header=header, calling_ae="IMPORT", peer="file"))
        except OutOfResources as exc:
            log.error("import of %s not committed: %s", path.name, exc)
            return None

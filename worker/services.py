"""Long-running parts assembled from their pieces: the ingest side (listener, importer, sweeper) and the worker."""

from __future__ import annotations

import logging
from pathlib import Path

from db import queries
from db.engine import open_database
from dicom_io.files import encoded_file
from dicom_io.listener import Listener, ListenerConfig, OutOfResources, ReceivedInstance, parse_received
from dicom_io.spool import Spool
from worker.celery_app import create_celery
from worker.config import ReportingConfig, WorkerConfig
from worker.heartbeat import Heartbeat
from worker.ingest import Ingestor
from worker.outbox import OutboxSweeper, TaskPublisher
from worker.queue_files import quarantine_unreadable_messages

log = logging.getLogger(__name__)


class IngestService:
    """Everything that accepts instances: the DICOM listener, the file importer and the outbox sweeper."""

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

    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()
        self.sweeper.sweep_once()  # whatever a previous run left behind goes out first
        self.sweeper.start()
        if self.reporter is not None:
            self.reporter.start()

    def stop(self) -> None:
        if self.reporter is not None:
            self.reporter.stop()
        self.sweeper.stop()
        if self.listener is not None:
            self.listener.stop()
        self.engine.dispose()

    def import_file(self, path: Path) -> queries.WorkItem | None:
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


def run_worker(config: WorkerConfig, *, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO",
               queues: str | None = None, hostname: str | None = None) -> None:
    """Run a Celery worker in this process (blocking). The model loads on the first task, in the child."""
    from model.checkpoint import file_sha256, read_metadata  # torch: only in worker processes, not the listener
    from worker.pipeline import checkpoint_path, register_model

    engine, sessions = open_database(config.database_url)  # migrate before tasks arrive
    path = checkpoint_path(config)
    register_model(sessions, config, read_metadata(path), file_sha256(path))  # the page knows it from the start
    Heartbeat(sessions, hostname).start()  # in this (parent) process: /healthz counts the worker while it lives
    if config.uses_embedded_broker:
        quarantine_unreadable_messages(config.queue_dir)  # one empty message file would stop every start
    app = create_celery(config)
    argv = ["worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
            f"--queues={queues or config.queue}", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)

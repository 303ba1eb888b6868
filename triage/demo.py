"""The demo: the whole system on embedded defaults, fed real chest X-rays over DICOM, showing the worklist."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.progress import Progress
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.model_registry import untrained_models_in_use
from db.models import Instance, InstanceStatus
from db.worklist import worklist
from dicom_io.files import read_dataset
from dicom_io.sender import send_files
from dicom_io.synthetic import write_samples
from triage.console import console
from triage.settings import Settings
from triage.supervisor import WorkerSupervisor
from triage.web_server import web_server
from triage.wiring import listener_client_tls, listener_config, settings_env, worker_config
from worker.ingest_service import IngestService
from worklist.table import print_worklist

SHARED_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"


def demo_files(source: Path | None, settings: Settings) -> list[Path]:
    folder = source or SHARED_DICOM
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*.dcm") if p.is_file())
        if files:
            console.print(f"sending {len(files)} real chest X-ray(s) from {folder}")
            return files
    samples = write_samples(settings.data_dir / "demo-samples")
    console.print(f"{folder} not found: sending {len(samples)} generated chest-like images instead")
    return samples


def wait_for_results(ingest: IngestService, sop_uids: set[str], since: datetime,
                     timeout: float) -> bool:
    """Poll the database until every sent instance has an outcome recorded after ``since``."""
    finished = set(InstanceStatus) - set(InstanceStatus.unfinished())
    deadline = time.monotonic() + timeout
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("classifying", total=len(sop_uids))
        while time.monotonic() < deadline:
            with ingest.sessions() as session:
                done = _count_finished(session, sop_uids, since, finished)
            progress.update(task, completed=done)
            if done >= len(sop_uids):
                return True
            time.sleep(0.5)
    return False


def _count_finished(session: Session, sop_uids: set[str], since: datetime, finished: set[InstanceStatus]) -> int:
    rows = session.scalars(
        select(Instance.sop_instance_uid).where(
            Instance.sop_instance_uid.in_(sop_uids), Instance.status.in_(finished), Instance.finished_at >= since
        )
    ).all()
    return len(set(rows))


def run_demo(settings: Settings, *, once: bool, source: Path | None, timeout: float) -> int:
    files = demo_files(source, settings)
    sop_uids = {str(read_dataset(path).SOPInstanceUID) for path in files}
    ingest = IngestService(worker_config(settings), listener_config(settings))
    ingest.start()
    worker = WorkerSupervisor(settings_env(settings))
    worker.start()
    server = web_server(settings)
    web_thread = threading.Thread(target=server.run, name="web", daemon=True)
    web_thread.start()
    try:
        since = datetime.now(UTC)
        started = time.monotonic()
        results = send_files(files, host="127.0.0.1", port=ingest.listener.port if ingest.listener else 0,
                             called_aet=settings.dicom_ae_title, calling_aet="CXR_DEMO",
                             tls=listener_client_tls(settings))
        refused = [r for r in results if not r.ok]
        for r in refused:
            console.print(f"[red]{r.path.name}: not stored (status {r.status})[/red]")
        console.print(f"sent {len(results) - len(refused)} of {len(results)} over DICOM; waiting for results…")
        if not wait_for_results(ingest, sop_uids, since, timeout):
            console.print(f"[red]not every instance was classified within {timeout:.0f} s[/red]")
            return 1
        console.print(f"all {len(sop_uids)} instance(s) classified in {time.monotonic() - started:.1f} s")
        with ingest.sessions() as session:
            print_worklist(console, worklist(session, borderline_band=settings.borderline_band),
                           untrained_models_in_use(session), settings.timezone)
        if once:
            return 0 if not refused else 1
        console.print(f"worklist page at http://{settings.web_host}:{settings.web_port}/ — Ctrl-C to stop")
        try:
            while web_thread.is_alive():
                web_thread.join(1)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        server.should_exit = True
        web_thread.join(10)
        worker.stop()
        ingest.stop()

"""Receive→flag latency of single-image studies on embedded defaults, with dcmtk's storescp as the baseline.

    .venv/bin/python bench/receive_to_flag.py [--studies 10] [--rows 2500 --columns 2048]

For each study, one at a time: the C-STORE round trip to our listener (commit included) and to dcmtk's storescp
(write to disk only) in the same run, then the time from our commit to the study's flag in the database.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from db.models import Instance, Study, StudyStatus
from dicom_io.sender import send_files
from dicom_io.synthetic import chest_dataset
from triage.settings import Settings
from triage.supervisor import WorkerSupervisor
from triage.wiring import listener_config, settings_env, worker_config
from worker.ingest_service import IngestService


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_study(ingest: IngestService, study_uid: str, timeout: float = 300) -> tuple[float, timedelta]:
    """Seconds until the study is finished as seen by polling, and flagged_at − the instance's received_at."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        with ingest.sessions() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
            if study is not None and study.status != StudyStatus.PENDING and study.flagged_at is not None:
                received = session.scalar(select(Instance.received_at).where(Instance.study_id == study.id))
                assert received is not None  # the study exists, so its instance does
                return time.perf_counter() - start, study.flagged_at - received
        time.sleep(0.01)
    raise TimeoutError(study_uid)


def storescp(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """dcmtk's storescp writing to ``folder``; /usr/bin explicitly, since pynetdicom installs its own storescp."""
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TCP_NODELAY": "1"}
    process = subprocess.Popen(["/usr/bin/storescp", "+xa", "-od", str(folder), str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    raise RuntimeError("storescp did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2048)
    args = parser.parse_args()
    console = Console(width=120)

    work = Path(tempfile.mkdtemp(prefix="bench-r2f-"))
    files = []
    for index in range(args.studies + 1):  # the first one warms the worker up (model load)
        path = work / f"study-{index}.dcm"
        chest_dataset(patient_index=index, seed=index, rows=args.rows, columns=args.columns).save_as(
            path, enforce_file_format=True)
        files.append(path)

    os.environ.update(TRIAGE_DATA_DIR=str(work / "var"), TRIAGE_DICOM_PORT=str(free_port()),
                      TRIAGE_SWEEP_INTERVAL_S="5", TRIAGE_LOG_LEVEL="WARNING")
    settings = Settings()
    ingest = IngestService(worker_config(settings), listener_config(settings))
    ingest.start()
    worker = WorkerSupervisor(settings_env(settings))
    worker.start()
    baseline_port = free_port()
    baseline = storescp(work / "storescp", baseline_port) if Path("/usr/bin/storescp").exists() else None
    ours, theirs, flag_after_commit, seen = [], [], [], []
    try:
        send_files(files[:1], host="127.0.0.1", port=settings.dicom_port, called_aet=settings.dicom_ae_title)
        wait_for_study(ingest, str(chest_dataset_uid(files[0])))
        for path in files[1:]:
            if baseline is not None:
                t0 = time.perf_counter()
                [result] = send_files([path], host="127.0.0.1", port=baseline_port, called_aet="STORESCP")
                theirs.append(time.perf_counter() - t0)
                assert result.ok, result
            t0 = time.perf_counter()
            [result] = send_files([path], host="127.0.0.1", port=settings.dicom_port,
                                  called_aet=settings.dicom_ae_title)
            ours.append(time.perf_counter() - t0)
            assert result.ok, result
            wall, after_commit = wait_for_study(ingest, str(chest_dataset_uid(path)))
            seen.append(ours[-1] + wall)
            flag_after_commit.append(after_commit.total_seconds())
    finally:
        worker.stop()
        ingest.stop()
        if baseline is not None:
            baseline.terminate()
            baseline.wait()
        shutil.rmtree(work, ignore_errors=True)

    size_mb = args.rows * args.columns * 2 / 1e6
    table = Table(title=f"Receive → flag, {args.studies} single-image studies, {args.rows}×{args.columns} "
                        f"16-bit CR ({size_mb:.1f} MB), embedded defaults, CPU")
    for column in ("measure", "median s", "p90 s", "min s"):
        table.add_column(column, justify="right" if column != "measure" else "left")

    def row(name: str, values: list[float]) -> None:
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        table.add_row(name, f"{statistics.median(values):.3f}", f"{p90:.3f}", f"{ordered[0]:.3f}")

    if theirs:
        row("C-STORE round trip, dcmtk storescp (baseline)", theirs)
    row("C-STORE round trip, cxr-triage (spool + DB commit)", ours)
    row("commit → study flagged (DB timestamps)", flag_after_commit)
    row("send start → flag visible (polled)", seen)
    console.print(table)
    if theirs:
        console.print(f"C-STORE ratio cxr-triage / storescp: {statistics.median(ours) / statistics.median(theirs):.2f}")


def chest_dataset_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


if __name__ == "__main__":
    main()

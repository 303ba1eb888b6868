"""The product as its users run it: `cxr-triage listen`, `worker` and `web` as real processes on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import create_engine, text

from peers import free_port, wait_for_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Backend:
    """Where the database and the queue live: embedded (SQLite + filesystem queue) or fleet (PostgreSQL + Redis)."""

    name: str
    database_url: str  # empty = SQLite in the data folder
    broker_url: str  # empty = embedded filesystem queue


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` when time runs out."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Stack:
    def __init__(self, workdir: Path, backend: Backend, model_path: Path, **settings: str) -> None:
        self.workdir = workdir
        self.backend = backend
        self.data_dir = workdir / "data"
        self.dicom_port = free_port()
        self.web_port = free_port()
        self.ae_title = "CXR_TRIAGE"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")},
            "TRIAGE_DATA_DIR": str(self.data_dir),
            "TRIAGE_DATABASE_URL": backend.database_url,
            "TRIAGE_BROKER_URL": backend.broker_url,
            "TRIAGE_QUEUE": f"triage-test-{uuid.uuid4().hex[:8]}",
            "TRIAGE_DICOM_PORT": str(self.dicom_port),
            "TRIAGE_WEB_PORT": str(self.web_port),
            "TRIAGE_MODEL": str(model_path),
            "TRIAGE_SWEEP_INTERVAL_S": "1",
            "PYTHONUNBUFFERED": "1",
            **{f"TRIAGE_{k.upper()}": v for k, v in settings.items()},
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.web_port}", timeout=30, trust_env=False)

    @property
    def database_url(self) -> str:
        return self.backend.database_url or f"sqlite:///{(self.data_dir / 'triage.sqlite3').resolve()}"

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start_process(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.log_path(name), "ab")
        process = subprocess.Popen([sys.executable, "-m", "triage", *args], env=self.env, cwd=self.workdir,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def start(self) -> Stack:
        self.start_process("web", "web")
        wait_until(self._healthy, 60, "the web server's /healthz")  # it also migrated the database
        self.start_process("listener", "listen")
        wait_for_port("127.0.0.1", self.dicom_port, 60)
        self.start_worker()
        return self

    def start_worker(self) -> None:
        self.start_process("worker", "worker", "--pool", "solo")

    def kill_worker(self) -> None:
        """SIGKILL: no warm shutdown, no acknowledgement, exactly what a crash or OOM kill does."""
        process = self.processes.pop("worker")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    def _healthy(self) -> bool:
        self.check_alive("web")
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def check_alive(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{self.logs(name)[-3000:]}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        self.http.close()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading what the product says ------------------------------------------------------------------

    def worklist(self, **params: Any) -> list[dict[str, Any]]:
        response = self.http.get("/api/worklist", params=params)
        response.raise_for_status()
        return response.json()["items"]

    def study(self, study_uid: str) -> dict[str, Any] | None:
        response = self.http.get(f"/api/studies/{study_uid}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def wait_for_study(self, study_uid: str, timeout: float = 180, final: bool = True) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            study = self.study(study_uid)
            if study is None:
                return None
            return study if (study["status"] != "PENDING" or not final) else None

        return wait_until(ready, timeout, f"study {study_uid} to be finished")

    def sql(self, query: str, **params: Any) -> list[Any]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(query), params))
        finally:
            engine.dispose()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "triage", *args], env=self.env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout)

    def logs(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

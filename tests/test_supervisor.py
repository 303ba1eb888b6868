"""The single-machine form keeps its worker alive: a worker that dies is started again, an unreadable message file
in the embedded queue is set aside instead of stopping every start, and no worker outlives its parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from triage.supervisor import WorkerSupervisor
from worker.queue_files import quarantine_unreadable_messages

from stack import wait_until


def _ended(pid: int) -> bool:
    """The process is gone, or a zombie (which only waits for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_unreadable_queue_messages_are_set_aside_and_readable_ones_kept(tmp_path: Path) -> None:
    old = time.time() - 60
    empty, cut, good, fresh = (tmp_path / f"{name}.triage.msg" for name in ("empty", "cut", "good", "fresh"))
    empty.write_bytes(b"")
    cut.write_bytes(b'{"body": "eyJh')
    good.write_text(json.dumps({"body": "e30=", "headers": {}}))
    fresh.write_bytes(b"")  # being written by the listener right now
    for path in (empty, cut, good):
        os.utime(path, (old, old))
    moved = quarantine_unreadable_messages(tmp_path)
    assert sorted(p.name for p in moved) == ["cut.triage.msg", "empty.triage.msg"]
    assert all(p.parent == tmp_path / "unreadable" and p.is_file() for p in moved)
    assert good.is_file() and fresh.is_file()


def test_a_dead_worker_is_started_again() -> None:
    supervisor = WorkerSupervisor({}, command=[sys.executable, "-c", "import time; time.sleep(60)"],
                                  check_interval_s=0.05)
    supervisor.start()
    try:
        first = supervisor.process
        assert first is not None
        first.send_signal(signal.SIGKILL)
        wait_until(lambda: supervisor.process is not first and supervisor.process.poll() is None, 10,
                   "a new worker process")
        assert supervisor.restarts[0].exit_code == -signal.SIGKILL
    finally:
        supervisor.stop()
    assert supervisor.process.poll() is not None  # stop() ends it


def test_no_worker_outlives_its_parent_even_after_sigkill(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from triage.supervisor import start_child\n"
        "child = start_child([sys.executable, '-c', 'import time; time.sleep(120)'], {})\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n")], cwd=Path(__file__).resolve().parents[1])
    try:
        child_pid = int(wait_until(lambda: pid_file.is_file() and pid_file.read_text(), 30, "the child's pid"))
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)

        wait_until(lambda: _ended(child_pid), 10, "the orphaned child to end")
    finally:
        parent.kill()


def test_serve_resumes_after_its_worker_is_killed_and_a_message_file_is_empty(tmp_path: Path,
                                                                                  model_path: Path) -> None:
    """The probe's scenario: kill -9 of the embedded worker, then a 0-byte message in the queue. Work resumes
    without restarting ``serve``; kill -9 of ``serve`` then takes its worker with it."""
    import httpx
    from sqlalchemy import create_engine, text

    from dicom_io.sender import send_files
    from dicom_io.synthetic import chest_dataset

    from peers import free_port, wait_for_port

    data, dicom_port, web_port = tmp_path / "var", free_port(), free_port()
    env = {**os.environ, "TRIAGE_DATA_DIR": str(data), "TRIAGE_MODEL": str(model_path),
           "TRIAGE_DICOM_PORT": str(dicom_port), "TRIAGE_WEB_PORT": str(web_port), "TRIAGE_REQUEUE_AFTER_S": "3",
           "TRIAGE_SWEEP_INTERVAL_S": "1"}
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "triage", "serve"], env=env, stdout=log, stderr=log,
                             cwd=tmp_path)
    engine = create_engine(f"sqlite:///{data / 'triage.sqlite3'}")

    def done(sop_uid: str) -> bool:
        with engine.connect() as connection:
            return connection.execute(text("SELECT status FROM instances WHERE sop_instance_uid = :u"),
                                      {"u": sop_uid}).scalar() == "DONE"

    def send(index: int) -> str:
        ds = chest_dataset(patient_index=900 + index, rows=128, columns=112, seed=index)
        path = tmp_path / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        [result] = send_files([path], host="127.0.0.1", port=dicom_port, called_aet="CXR_TRIAGE")
        assert result.ok
        return str(ds.SOPInstanceUID)

    def worker_pids() -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(serve.pid), "-f", "triage worker"], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    try:
        wait_for_port("127.0.0.1", dicom_port, 60)
        first = send(1)
        wait_until(lambda: done(first), 120, "the first instance to be classified")
        [worker] = wait_until(worker_pids, 10, "the worker process")
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: worker not in worker_pids(), 10, "the killed worker to be gone")
        queue = data / "queue"
        empty = queue / "0000000000_left-by-a-full-disk.triage.msg"
        empty.write_bytes(b"")
        os.utime(empty, (time.time() - 60, time.time() - 60))
        second = send(2)
        wait_until(lambda: done(second), 180, "the second instance, after the worker was killed")
        assert (queue / "unreadable" / empty.name).is_file()
        health = httpx.get(f"http://127.0.0.1:{web_port}/healthz", timeout=10).json()
        assert health["worker_restarts"] == 1 and health["workers_alive"] >= 1, health  # what happened meanwhile
        [restarted] = worker_pids()
        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
        wait_until(lambda: _ended(restarted), 30, "the worker to end with its parent")
    finally:
        serve.kill()
        log.close()
        engine.dispose()

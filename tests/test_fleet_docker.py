"""The docker compose fleet, built and run for real: studies in, worklist out, a worker container killed, nothing lost.

`make images` (deploy/docker/build-images.sh: the Debian base when missing, then the cxr-triage, Redis and PostgreSQL
images with docker's layer cache), then ``docker-compose.yml`` + ``docker-compose.offline.yml`` with the CPU worker
profile and two workers. Every container uses the host's network on ports of its own, free ones picked here, so all
traffic stays on loopback and the machine's own Redis and PostgreSQL are left alone. dcmtk's ``storescu`` sends the
real chest radiographs in ``../shared/data/dicom/`` to the listener container; they are waited for on the web
container's ``/api/worklist`` with the API token. Then a backlog of 50 copies (new SOP Instance UIDs) is sent, one
worker container is killed with ``docker kill`` in the middle of it, and the fleet's PostgreSQL must show every
instance finished with exactly one result. ``down -v`` removes containers and volumes; the images stay for the next
run.

It runs with each compose implementation found, ``docker compose`` v2 first, then Debian's ``docker-compose`` 1.29
(``FLEET_COMPOSE=v1`` or ``v2`` picks one): the first one found runs all of it, the other one up to the real studies on
the worklist (the backlog and the kill take a minute more and test the fleet, not compose; ``FLEET_FULL=all`` runs
them with each). Skips, saying why, where dockerd cannot be reached (.ci/run starts it), no compose is installed, or
dcmtk or the DICOM files are missing. Timings go to test-output/fleet-docker-*.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import peers
from conftest import real_dicom_files
from peers import free_port
from stack import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.peers]
T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.offline.yml")
BUILD_SCRIPT = ROOT / "deploy" / "docker" / "build-images.sh"
BASE_IMAGE = "local/bookworm-python:3.11"
IMAGES = ("cxr-triage:latest", "local/redis:7-bookworm", "local/postgres:15-bookworm")
TIMINGS_DIR = ROOT / "test-output"
BACKLOG = 50
WORKERS = 2
CALLING_AETS = "STORESCU,ECHOSCU"
FINISHED = ("DONE", "NOT_ANALYSED", "FAILED")
BUILD_TIMEOUT_S = 1800  # a cold machine: debootstrap, then ~4 GB of torch and CUDA wheels (6.5 min here)


def _docker() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI (apt-get install docker.io; .ci/run installs it)")
    try:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("dockerd did not answer `docker info` within 30 s")
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        pytest.skip(f"dockerd is not reachable ({reason}); .ci/run starts it with "
                    "`dockerd --bridge=none --iptables=false`")
    return docker


def _compose_commands(docker: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    candidates = {"v2": [docker, "compose"], "v1": [shutil.which("docker-compose") or "docker-compose"]}
    for name, command in candidates.items():
        try:
            version = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        # docker-compose may itself be v2 installed standalone: judge by what it says, not by its name.
        if version.returncode == 0 and (name == "v2") == (" v2." in version.stdout or "version v2" in version.stdout):
            found[name] = command
    return found


def _wanted() -> list[str]:
    return [w.strip() for w in os.environ.get("FLEET_COMPOSE", "v2,v1").split(",") if w.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "compose_version" in metafunc.fixturenames:
        metafunc.parametrize("compose_version", _wanted(), scope="module")


@pytest.fixture(scope="module")
def docker() -> str:
    return _docker()


@pytest.fixture(scope="module")
def images(docker: str) -> dict[str, Any]:
    """The images, built once for the module: only what is missing or changed (layer cache)."""
    have_base = subprocess.run([docker, "image", "inspect", BASE_IMAGE], capture_output=True).returncode == 0
    if not have_base and (os.geteuid() != 0 or shutil.which("debootstrap") is None):
        pytest.skip(f"{BASE_IMAGE} is missing and making it needs root and debootstrap (.ci/run installs it)")
    TIMINGS_DIR.mkdir(exist_ok=True)
    log = TIMINGS_DIR / "fleet-docker-build.log"
    started = time.monotonic()
    with log.open("w") as out:
        built = subprocess.run(["bash", str(BUILD_SCRIPT)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                               timeout=BUILD_TIMEOUT_S, env={**os.environ, "DOCKER": docker})
    text = log.read_text(errors="replace")
    assert built.returncode == 0, f"make images failed ({log}):\n{text[-4000:]}"
    took = {}
    for line in text.split("==> took", 1)[-1].split("==> images", 1)[0].splitlines():
        words = line.split()
        if len(words) == 2 and words[1].endswith("s"):
            took[words[0]] = int(words[1][:-1])
    sizes = {image: int(subprocess.run([docker, "image", "inspect", "--format", "{{.Size}}", image],
                                       capture_output=True, text=True, check=True).stdout) // 1_000_000
             for image in (BASE_IMAGE, *IMAGES)}
    return {"build_s": round(time.monotonic() - started, 1), "steps_s": took, "sizes_mb": sizes}


class Fleet:
    """One compose project on free loopback ports; ``down -v`` when done."""

    def __init__(self, docker: str, compose: list[str], workdir: Path) -> None:
        self.docker = docker
        self.project = f"cxrfleet{uuid.uuid4().hex[:8]}"
        self.ports = {name: free_port() for name in ("redis", "postgres", "dicom", "web")}
        self.token = uuid.uuid4().hex
        empty_env_file = workdir / "compose.env"  # a developer's .env must not reach the test's fleet
        empty_env_file.write_text("")
        self.compose = [*compose, "--env-file", str(empty_env_file), "-p", self.project,
                        *(arg for name in COMPOSE_FILES for arg in ("-f", str(ROOT / name))), "--profile", "cpu"]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TRIAGE_", "PIP_", "COMPOSE_", "FLEET_"))},
            "FLEET_REDIS_PORT": str(self.ports["redis"]),
            "FLEET_POSTGRES_PORT": str(self.ports["postgres"]),
            "TRIAGE_DICOM_HOST": "127.0.0.1",
            "TRIAGE_DICOM_PORT": str(self.ports["dicom"]),
            "TRIAGE_WEB_HOST": "127.0.0.1",
            "TRIAGE_WEB_PORT": str(self.ports["web"]),
            "TRIAGE_API_TOKEN": self.token,
            "TRIAGE_ALLOWED_CALLING_AETS": CALLING_AETS,
            "TRIAGE_SWEEP_INTERVAL_S": "2",
            "TRIAGE_REQUEUE_AFTER_S": "30",  # a killed worker's task is enqueued again after this
        }
        self.database_url = f"postgresql+psycopg://triage:triage@127.0.0.1:{self.ports['postgres']}/triage"
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.ports['web']}", timeout=30, trust_env=False,
                                 headers={"Authorization": f"Bearer {self.token}"})
        self.workdir = workdir

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.compose, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result

    def container_ids(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).stdout.split()

    def inspect(self, container: str) -> dict[str, Any]:
        out = subprocess.run([self.docker, "inspect", container], capture_output=True, text=True, check=True).stdout
        data: dict[str, Any] = json.loads(out)[0]
        return data

    def logs(self) -> str:
        result = self.run("logs", "--no-color", "--tail", "60", timeout=60, check=False)
        return result.stdout[-12000:]

    def sql(self, query: str) -> list[Any]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(query)))
        finally:
            engine.dispose()

    def worklist(self) -> dict[str, dict[str, Any]]:
        try:
            response = self.http.get("/api/worklist", params={"limit": 1000})
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        return {item["study_uid"]: item for item in response.json()["items"]}

    def down(self) -> None:
        self.http.close()
        self.run("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180, check=False)


@pytest.fixture(scope="module")
def compose_commands(docker: str) -> dict[str, list[str]]:
    return _compose_commands(docker)


@pytest.fixture
def compose(compose_commands: dict[str, list[str]], compose_version: str) -> list[str]:
    if compose_version not in compose_commands:
        pytest.skip(f"compose {compose_version} is not installed (found: {', '.join(compose_commands) or 'none'}); "
                    ".ci/run installs docker-compose 1.29 and the compose v2 plugin")
    return compose_commands[compose_version]


def test_compose_reads_the_default_and_the_offline_form(compose: list[str], tmp_path: Path) -> None:
    """Both forms parse: the sites' default (docker-compose.yml + docker-compose.override.yml, read without -f) and
    the offline one; `name:` at the top, for instance, breaks compose 1.x."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("TRIAGE_API_TOKEN=example-token\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIAGE_", "COMPOSE_"))}
    for files in ([], ["-f", "docker-compose.yml", "-f", "docker-compose.offline.yml"]):
        result = subprocess.run([*compose, "--env-file", str(env_file), *files, "--profile", "cpu", "config"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{' '.join(files) or 'default'}: {result.stderr[-2000:]}"
        offline = bool(files)
        assert ("network_mode: host" in result.stdout) == offline
        # Published ports: the sites' form publishes 11112 and 8000; compose 1.x refuses them in host mode.
        assert ("published:" in result.stdout) != offline, result.stdout[-3000:]


def _remove_stale_fleets(docker: str, older_than_s: float = 3600) -> None:
    """Fleets of earlier runs that were cut off before `down` (their containers would come back with dockerd, as
    restart: unless-stopped says): removed with their volumes once they are older than any run of this test."""
    listed = subprocess.run([docker, "ps", "-aq", "--filter", "label=com.docker.compose.project"],
                            capture_output=True, text=True, timeout=60).stdout.split()
    if not listed:
        return
    details = json.loads(subprocess.run([docker, "inspect", *listed], capture_output=True, text=True,
                                        timeout=60).stdout or "[]")
    now = datetime.now(UTC)
    stale_projects = set()
    for container in details:
        project = container["Config"]["Labels"].get("com.docker.compose.project", "")
        created = datetime.strptime(container["Created"].split(".")[0].rstrip("Z"), "%Y-%m-%dT%H:%M:%S")
        age = (now - created.replace(tzinfo=UTC)).total_seconds()
        if project.startswith("cxrfleet") and age > older_than_s:
            stale_projects.add(project)
            subprocess.run([docker, "rm", "-f", "-v", container["Id"]], capture_output=True, timeout=60)
    for project in stale_projects:
        label = f"label=com.docker.compose.project={project}"
        volumes = subprocess.run([docker, "volume", "ls", "-q", "--filter", label], capture_output=True, text=True,
                                 timeout=60).stdout.split()
        if volumes:
            subprocess.run([docker, "volume", "rm", "-f", *volumes], capture_output=True, timeout=60)


@pytest.fixture
def fleet(docker: str, compose: list[str], images: dict[str, Any], tmp_path: Path) -> Iterator[Fleet]:
    _remove_stale_fleets(docker)
    running = Fleet(docker, compose, tmp_path)
    try:
        yield running
    finally:
        running.down()


def _copy_with_new_uids(source: Path, target: Path, study_uid: str) -> str:
    """The file as received, with a new SOP Instance UID (and this round's study): a new instance, same pixels."""
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    ds = dcmread(source, force=True)
    sop_uid = generate_uid()
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", FileMetaDataset()):  # a bare data set, no file meta
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.save_as(target, enforce_file_format=True)
    return sop_uid


@pytest.mark.timeout(BUILD_TIMEOUT_S + 900)
def test_fleet_receives_classifies_and_survives_a_killed_worker(fleet: Fleet, images: dict[str, Any],
                                                                compose_version: str,
                                                                compose_commands: dict[str, list[str]],
                                                                tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    peers.require_dcmtk()
    files = real_dicom_files()
    first_found = next(v for v in _wanted() if v in compose_commands)
    full = compose_version == first_found or os.environ.get("FLEET_FULL") == "all"
    timings: dict[str, Any] = {"compose": compose_version, "full": full, **images}

    def failing(what: str) -> str:
        return f"{what}\n--- compose logs ---\n{fleet.logs()}"

    def wait(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
        try:
            return wait_until(predicate, timeout, what, interval=interval)
        except AssertionError as exc:
            raise AssertionError(failing(str(exc))) from None

    # 1. up: two CPU workers, no GPU worker; the images were built above, so nothing is built here.
    started = time.monotonic()
    fleet.run("up", "-d", "--no-build", "--scale", "worker=0", "--scale", f"worker-cpu={WORKERS}", timeout=600)
    timings["up_returned_s"] = round(time.monotonic() - started, 1)

    # Host networking only: no network was made for the project, every container is in the host's stack.
    networks = subprocess.run([fleet.docker, "network", "ls", "-q", "--filter",
                               f"label=com.docker.compose.project={fleet.project}"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert not networks, f"the fleet made networks {networks}: a bridge would use private addresses"
    services = {name: fleet.container_ids(name) for name in ("redis", "postgres", "listener", "worker-cpu", "web")}
    assert len(services["worker-cpu"]) == WORKERS, services
    assert not fleet.container_ids("worker"), "the GPU worker was started on a host without a GPU"
    for name, ids in services.items():
        assert ids, failing(f"{name}: no container")
        for container in ids:
            assert fleet.inspect(container)["HostConfig"]["NetworkMode"] == "host", f"{name} is not on the host network"

    # 2. The listener container answers C-ECHO.
    def echoed() -> bool:
        return peers.echoscu(fleet.ports["dicom"], calling_aet="ECHOSCU", timeout=5).returncode == 0

    wait(echoed, 300, "the listener container to answer C-ECHO", interval=0.5)
    timings["up_to_echo_s"] = round(time.monotonic() - started, 1)
    refused = peers.echoscu(fleet.ports["dicom"], calling_aet="INTRUDER", timeout=5)
    assert refused.returncode != 0, "a calling AE title outside TRIAGE_ALLOWED_CALLING_AETS was accepted"

    # 3. The real chest radiographs, C-STOREd to the listener container, reach the web container's worklist.
    sent = peers.storescu(files, fleet.ports["dicom"], calling_aet="STORESCU")
    assert sent.ok, sent.log[-3000:]
    study_uids = {str(dcmread(path, force=True, stop_before_pixels=True).StudyInstanceUID) for path in files}

    def first_listed() -> bool:
        return bool(study_uids & set(fleet.worklist()))

    wait(first_listed, 120, "the first study on /api/worklist", interval=0.5)
    timings["up_to_first_study_listed_s"] = round(time.monotonic() - started, 1)

    def first_classified() -> bool:
        listed = fleet.worklist()
        return any(listed[uid]["status"] != "PENDING" for uid in study_uids & set(listed))

    wait(first_classified, 300, "the first study's result on /api/worklist", interval=0.5)
    timings["up_to_first_result_s"] = round(time.monotonic() - started, 1)

    def all_classified() -> dict[str, dict[str, Any]]:
        listed = fleet.worklist()
        done = study_uids <= set(listed) and all(listed[uid]["status"] != "PENDING" for uid in study_uids)
        return listed if done else {}

    listed = wait(all_classified, 300, "every real study's result on /api/worklist", interval=1)
    timings["up_to_all_real_studies_s"] = round(time.monotonic() - started, 1)
    for uid in study_uids:
        item = listed[uid]
        assert item["status"] == "DONE" and item["score"] is not None, item
        assert len(item["model_sha256"]) == 64, item
    unauthenticated = httpx.get(f"http://127.0.0.1:{fleet.ports['web']}/api/worklist", timeout=30, trust_env=False)
    assert unauthenticated.status_code == 401, "the web container served the worklist without the API token"
    real_sops = {str(dcmread(p, force=True, stop_before_pixels=True).SOPInstanceUID) for p in files}
    if not full:
        _assert_one_result_each(fleet, real_sops)
        _write_timings(compose_version, timings)
        return

    # 4. A backlog of 50 instances; one worker container is killed while it is being worked through.
    backlog_dir = tmp_path / "backlog"
    backlog_dir.mkdir()
    backlog: list[Path] = []
    round_study = generate_uid()
    for index in range(BACKLOG):
        if index % len(files) == 0:
            round_study = generate_uid()
        backlog.append(backlog_dir / f"{index:03d}.dcm")
        _copy_with_new_uids(files[index % len(files)], backlog[-1], round_study)
    backlog_sops = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in backlog}
    sent_at = time.monotonic()
    sent = peers.storescu(backlog, fleet.ports["dicom"], calling_aet="STORESCU", timeout=600)
    assert sent.ok, sent.log[-3000:]
    timings["backlog_sent_s"] = round(time.monotonic() - sent_at, 1)

    def count(statuses: tuple[str, ...]) -> int:
        names = ", ".join(f"'{s}'" for s in statuses)
        return int(fleet.sql(f"SELECT count(*) FROM instances WHERE status IN ({names})")[0][0])

    total = len(real_sops) + BACKLOG
    wait(lambda: count(FINISHED) > len(real_sops), 300, "the backlog's first result", interval=0.2)
    victim = services["worker-cpu"][0]
    subprocess.run([fleet.docker, "kill", victim], capture_output=True, text=True, check=True, timeout=60)
    killed_at = time.monotonic()
    left = total - count(FINISHED)
    timings["unfinished_when_killed"] = left
    assert left > 0, "the backlog drained before a worker could be killed"

    def all_finished() -> bool:
        return count(FINISHED) == total

    wait(all_finished, 600, f"all {total} instances to finish after the kill", interval=1)
    timings["kill_to_all_finished_s"] = round(time.monotonic() - killed_at, 1)
    timings["backlog_s"] = round(time.monotonic() - sent_at, 1)

    # 5. Every instance ends with exactly one result: each scored one has one row in results, nothing else has one.
    _assert_one_result_each(fleet, real_sops | backlog_sops)
    listed = fleet.worklist()
    assert all(listed[uid]["status"] == "DONE" for uid in listed), "a study is still pending on the worklist"
    timings["killed_worker_state"] = fleet.inspect(victim)["State"]["Status"]
    _write_timings(compose_version, timings)


def _assert_one_result_each(fleet: Fleet, sent: set[str]) -> None:
    """Every instance sent is in the fleet's database, finished, scored, with exactly one row in results."""
    rows = fleet.sql(
        "SELECT i.sop_instance_uid, i.status, count(r.id) FROM instances i LEFT JOIN results r ON r.instance_id = i.id "
        "GROUP BY i.id, i.sop_instance_uid, i.status")
    by_sop = {str(sop): (str(status), int(results)) for sop, status, results in rows}
    assert set(by_sop) == sent, "instances in the database differ from those sent"
    wrong = {sop: state for sop, state in by_sop.items() if state != ("DONE", 1)}
    assert not wrong, f"instances not scored with exactly one result (status, results): {wrong}"


def _write_timings(compose_version: str, timings: dict[str, Any]) -> None:
    TIMINGS_DIR.mkdir(exist_ok=True)
    (TIMINGS_DIR / f"fleet-docker-{compose_version}.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(json.dumps(timings))

"""Drive real DICOM peers (dcmtk command-line tools, Orthanc) over loopback in tests.

dcmtk and Orthanc leave Nagle's algorithm on unless ``TCP_NODELAY=1`` is in the
environment (40-90 ms lost per C-STORE), so every peer is started with it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx

# Absolute paths, not PATH: pynetdicom installs console scripts named storescu/echoscu/storescp into the venv.
DCMTK_BIN_DIR = Path(os.environ.get("DCMTK_BIN_DIR", "/usr/bin"))
DCMTK_TOOLS = ("storescu", "echoscu", "storescp")
ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB_PLUGIN = Path(os.environ.get("ORTHANC_DICOMWEB_PLUGIN",
                                              "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"))

#: SOP classes proposed by :func:`storescu` unless told otherwise.
DEFAULT_SOP_CLASSES = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DXPresentation": "1.2.840.10008.5.1.4.1.1.1.1",
    "DXProcessing": "1.2.840.10008.5.1.4.1.1.1.1.1",
    "SecondaryCapture": "1.2.840.10008.5.1.4.1.1.7",
    "CT": "1.2.840.10008.5.1.4.1.1.2",
}

#: Each is proposed in a presentation context of its own, so a file goes in its stored syntax.
TRANSFER_SYNTAXES = {
    "ImplicitVRLittleEndian": "1.2.840.10008.1.2",
    "ExplicitVRLittleEndian": "1.2.840.10008.1.2.1",
    "ExplicitVRBigEndian": "1.2.840.10008.1.2.2",
    "DeflatedExplicitVRLittleEndian": "1.2.840.10008.1.2.1.99",
    "JPEGBaseline": "1.2.840.10008.1.2.4.50",
    "JPEGExtended": "1.2.840.10008.1.2.4.51",
    "JPEGLosslessP14": "1.2.840.10008.1.2.4.57",
    "JPEGLosslessSV1": "1.2.840.10008.1.2.4.70",
    "JPEGLSLossless": "1.2.840.10008.1.2.4.80",
    "JPEGLSNearLossless": "1.2.840.10008.1.2.4.81",
    "JPEG2000Lossless": "1.2.840.10008.1.2.4.90",
    "JPEG2000": "1.2.840.10008.1.2.4.91",
    "RLELossless": "1.2.840.10008.1.2.5",
}

_MAX_PRESENTATION_CONTEXTS = 128  # dcmtk's limit per association
_PROFILE = "CxrTriageTests"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Poll until ``host:port`` accepts TCP connections; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def dcmtk_env() -> dict[str, str]:
    """The current environment plus ``TCP_NODELAY=1`` (read by dcmtk and Orthanc)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def _skip(reason: str) -> None:
    import pytest  # lazily: the helpers also work outside pytest

    pytest.skip(reason)


def require_dcmtk() -> None:
    """Skip the calling test unless dcmtk's storescu, echoscu and storescp are installed."""
    if missing := [tool for tool in DCMTK_TOOLS if not os.access(DCMTK_BIN_DIR / tool, os.X_OK)]:
        _skip(f"dcmtk tools missing from {DCMTK_BIN_DIR}: {', '.join(missing)} (apt-get install dcmtk)")


def require_orthanc() -> None:
    """Skip the calling test unless the Orthanc binary is installed."""
    if not os.access(ORTHANC_BIN, os.X_OK):
        _skip(f"Orthanc not found at {ORTHANC_BIN} (apt-get install orthanc)")


def _run_dcmtk(tool: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool with TCP_NODELAY=1; its log (stderr) is merged into ``stdout``."""
    return subprocess.run(
        [str(DCMTK_BIN_DIR / tool), *args],
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def echoscu(
    port: int,
    *,
    host: str = "127.0.0.1",
    called_aet: str = "CXR_TRIAGE",
    calling_aet: str = "ECHOSCU",
    timeout: float = 30,
    tls: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send one C-ECHO; the caller checks ``returncode`` (0 = success), ``stdout`` holds the log. ``tls`` adds
    dcmtk's TLS options (e.g. ``+tls KEY CERT +cf CA``)."""
    args = ["-v", "-to", str(int(timeout)), *tls, "-aet", calling_aet, "-aec", called_aet, host, str(port)]
    return _run_dcmtk("echoscu", args, timeout + 5)


@dataclass
class FileOutcome:
    """What happened to one file given to :func:`storescu`."""

    path: Path
    status: int | None = None  # DIMSE status of the C-STORE response; None when no response came
    syntax: str = ""  # dcmtk's "stored -> sent" transfer syntax names, e.g. "JPEG Baseline -> JPEG Baseline"
    errors: list[str] = field(default_factory=list)  # dcmtk's E:/F:/W: lines about this file

    @property
    def kind(self) -> str:
        """``success``, ``warning``, ``failure`` (by DIMSE status) or ``not_sent`` (no response)."""
        if self.status is None:
            return "not_sent"
        if self.status == 0x0000:
            return "success"
        if self.status in (0x0001, 0x0107, 0x0116) or 0xB000 <= self.status <= 0xBFFF:
            return "warning"
        return "failure"

    @property
    def transcoded(self) -> bool:
        """True when storescu converted the file to another transfer syntax before sending."""
        stored, _, sent = self.syntax.partition(" -> ")
        return bool(sent) and stored != sent


@dataclass
class StorescuResult:
    """storescu's exit code, its debug log, and one parsed outcome per input file (in input order).

    storescu runs with ``--no-halt``, so its exit code is 0 even when files were refused
    or skipped: assert on the outcomes (or ``ok``), not on ``returncode``.
    """

    returncode: int
    log: str
    outcomes: list[FileOutcome]

    def _by_kind(self, kind: str) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.kind == kind]

    @property
    def succeeded(self) -> list[Path]:
        """Files answered with status 0x0000."""
        return [o.path for o in self._by_kind("success")]

    @property
    def failed(self) -> dict[Path, int]:
        """Files answered with a failure status: path -> status (warnings are in ``outcomes`` only)."""
        return {o.path: o.status for o in self._by_kind("failure") if o.status is not None}

    @property
    def not_sent(self) -> dict[Path, str]:
        """Files without a C-STORE response (unreadable, no accepted context, network error): path -> reason."""
        return {o.path: "\n".join(o.errors) for o in self._by_kind("not_sent")}

    @property
    def ok(self) -> bool:
        """Every file was stored with status 0x0000 in its own transfer syntax."""
        return self.returncode == 0 and all(o.kind == "success" and not o.transcoded for o in self.outcomes)


def write_storescu_profile(directory: Path, sop_classes: Iterable[str] = DEFAULT_SOP_CLASSES.values()) -> Path:
    """Write a dcmtk association profile for ``storescu -xf FILE CxrTriageTests`` into ``directory``.

    Every SOP class is proposed once per transfer syntax in TRANSFER_SYNTAXES.
    """
    pairs = [(sop, ts) for sop in sop_classes for ts in TRANSFER_SYNTAXES]
    if len(pairs) > _MAX_PRESENTATION_CONTEXTS:
        raise ValueError(f"{len(pairs)} presentation contexts > dcmtk's limit of {_MAX_PRESENTATION_CONTEXTS}")
    lines = ["[[TransferSyntaxes]]"]
    for name, uid in TRANSFER_SYNTAXES.items():
        lines += [f"[{name}]", f"TransferSyntax1 = {uid}"]
    lines += ["[[PresentationContexts]]", f"[{_PROFILE}Contexts]"]
    lines += [f"PresentationContext{i} = {sop}\\{ts}" for i, (sop, ts) in enumerate(pairs, 1)]
    lines += ["[[Profiles]]", f"[{_PROFILE}]", f"PresentationContexts = {_PROFILE}Contexts"]
    path = directory / "storescu.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


_SENDING = re.compile(r"^I: Sending file: (.*)$")
_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4})")
_SYNTAX = re.compile(r"^I: Converting transfer syntax: (.*)$")
_ASSOCIATION_END = ("I: Releasing Association", "I: Aborting Association")


def parse_storescu_log(log: str, files: list[str]) -> list[FileOutcome]:
    """Turn a ``storescu -d`` log into one FileOutcome per entry of ``files`` (as given on its command line)."""
    blocks: dict[str, deque[FileOutcome]] = defaultdict(deque)
    current: FileOutcome | None = None
    problems: list[str] = []  # E:/F:/W: lines outside any per-file block
    for line in log.splitlines():
        if m := _SENDING.match(line):
            current = FileOutcome(Path(m[1]))
            blocks[m[1]].append(current)
        elif line.startswith(_ASSOCIATION_END):
            current = None
        elif current is not None and (m := _STATUS.search(line)):
            current.status = int(m[1], 16)
        elif current is not None and (m := _SYNTAX.match(line)):
            current.syntax = m[1]
        elif line[:3] in ("E: ", "F: ", "W: "):
            (current.errors if current is not None else problems).append(line)
    outcomes = []
    for name in files:
        if blocks[name]:
            outcomes.append(blocks[name].popleft())
            continue
        about_file = [p for p in problems if name in p]  # e.g. "W: cannot access file: ..., ignoring file"
        fatal = [p for p in problems if p.startswith("F: ")]  # e.g. association refused or rejected
        outcomes.append(FileOutcome(Path(name), errors=about_file or fatal or ["not attempted"]))
    return outcomes


def storescu(
    files: Iterable[str | os.PathLike[str]],
    port: int,
    *,
    host: str = "127.0.0.1",
    called_aet: str = "CXR_TRIAGE",
    calling_aet: str = "STORESCU",
    timeout: float = 120,
    sop_classes: Iterable[str] = DEFAULT_SOP_CLASSES.values(),
    tls: Sequence[str] = (),
) -> StorescuResult:
    """C-STORE ``files`` on one association, each in its stored transfer syntax.

    Files with or without a preamble and file meta are read (``+f``). If the peer accepts
    a SOP class but not a file's syntax, dcmtk tries to transcode: see ``FileOutcome.transcoded``.
    Raises subprocess.TimeoutExpired if storescu runs longer than ``timeout`` s.
    """
    names = [os.fspath(f) for f in files]
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        profile = write_storescu_profile(Path(tmp), sop_classes)
        args = [
            "-d", "+f", "--no-halt", "-to", str(int(timeout)), *tls, "-xf", str(profile), _PROFILE,
            "-aet", calling_aet, "-aec", called_aet, host, str(port), *names,
        ]  # fmt: skip
        proc = _run_dcmtk("storescu", args, timeout)
    return StorescuResult(proc.returncode, proc.stdout, parse_storescu_log(proc.stdout, names))


class Orthanc:
    """A throw-away Orthanc on free loopback ports, storing under ``workdir``.

    ``modalities`` maps a modality id to ``(aet, host, port)`` for ``DicomModalities``.
    ``extra_config`` is merged over the generated configuration, last (e.g. ``LuaScripts``,
    ``Plugins``, ``DicomWeb``); relative paths in it are resolved by Orthanc from ``workdir``.
    Use as a context manager; a system Orthanc on 8042/4242 is left alone.
    """

    def __init__(
        self,
        workdir: Path,
        modalities: Mapping[str, tuple[str, str, int]],
        aet: str = "ORTHANC",
        extra_config: Mapping[str, Any] | None = None,
    ):
        self.workdir = Path(workdir)
        self.modalities = dict(modalities)
        self.aet = aet
        self.extra_config = dict(extra_config or {})
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.log_path = self.workdir / "orthanc.log"
        #: REST client; ignores proxy settings from the environment. Closed by :meth:`stop`.
        self.client = httpx.Client(base_url=self.http_url, timeout=30, trust_env=False)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> None:
        """Write the config, launch Orthanc and wait until ``GET /system`` answers."""
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [],
            "SaveJobs": False,
            **self.extra_config,  # last: a caller's key wins over the defaults above
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [ORTHANC_BIN, str(config_path)], cwd=self.workdir, env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._fail(f"Orthanc exited with code {self._proc.returncode}")
            try:
                if self.client.get("/system").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                self._fail(f"Orthanc did not answer GET /system within {timeout} s")
            time.sleep(0.1)

    def _fail(self, message: str) -> NoReturn:
        tail = self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"{message}; log tail:\n{tail}")

    def stop(self, timeout: float = 30) -> None:
        """Terminate Orthanc (kill it if it does not exit within ``timeout`` s)."""
        self.client.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def upload(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """POST a DICOM file to /instances; return Orthanc's answer (ID, ParentStudy, Status, ...)."""
        response = self.client.post(
            "/instances", content=Path(path).read_bytes(), headers={"Content-Type": "application/dicom"}
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def store_to_modality(self, modality_id: str, resources: list[str], timeout: float = 120) -> httpx.Response:
        """C-STORE Orthanc resources (instance/series/study ids) to a modality; the caller checks the response."""
        body = {"Resources": resources, "Synchronous": True}
        return self.client.post(f"/modalities/{modality_id}/store", json=body, timeout=timeout)

    def echo_modality(self, modality_id: str) -> bool:
        """C-ECHO a modality from Orthanc; True on success."""
        return self.client.post(f"/modalities/{modality_id}/echo", json={}).status_code == 200

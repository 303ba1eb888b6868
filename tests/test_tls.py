"""TLS. DICOM (TLS 1.2+): the listener with a certificate speaks only TLS; with a CA it requires a client
certificate that CA signed (checked with pynetdicom and dcmtk's ``echoscu``/``storescu +tls``). The web server
with a certificate speaks HTTPS only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dicom_io.listener import Listener, ListenerConfig, ReceivedInstance, RefusedAssociation, RejectedInstance
from dicom_io.sender import send_files
from dicom_io.synthetic import chest_dataset
from dicom_io.tls import client_context

import peers
from peers import free_port


class Keep:
    def __init__(self) -> None:
        self.committed: list[ReceivedInstance] = []

    def commit(self, instance: ReceivedInstance) -> None:
        self.committed.append(instance)

    def reject(self, rejected: RejectedInstance) -> None:
        raise AssertionError("nothing should be rejected")

    def refuse_association(self, refused: RefusedAssociation) -> None:
        raise AssertionError("no association should be refused")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server and a client certificate it signed, and a self-signed client nobody trusts."""
    folder = tmp_path_factory.mktemp("pki")
    files = {name: folder / name for name in ("ca.key", "ca.crt", "server.key", "server.crt", "client.key",
                                              "client.crt", "rogue.key", "rogue.crt")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
             "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]))
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(files[f"{name}.key"]),
                 "-out", str(folder / f"{name}.csr"))
        _openssl("x509", "-req", "-in", str(folder / f"{name}.csr"), "-CA", str(files["ca.crt"]), "-CAkey",
                 str(files["ca.key"]), "-CAcreateserial", "-days", "2", "-out", str(files[f"{name}.crt"]))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rogue",
             "-keyout", str(files["rogue.key"]), "-out", str(files["rogue.crt"]))
    return files


@pytest.fixture
def chest_file(tmp_path: Path) -> Path:
    path = tmp_path / "cr.dcm"
    chest_dataset(rows=64, columns=56).save_as(path, enforce_file_format=True)
    return path


def _listener(pki: dict[str, Path], mutual: bool) -> tuple[Listener, Keep]:
    keep = Keep()
    config = ListenerConfig("CXR_TRIAGE", "127.0.0.1", free_port(), [], tls_cert=pki["server.crt"],
                            tls_key=pki["server.key"], tls_ca=pki["ca.crt"] if mutual else None)
    listener = Listener(config, keep)
    listener.start()
    return listener, keep


def test_tls_store_works_and_plain_tcp_is_refused(pki: dict[str, Path], chest_file: Path) -> None:
    listener, keep = _listener(pki, mutual=False)
    try:
        [secure] = send_files([chest_file], host="127.0.0.1", port=listener.port, called_aet="CXR_TRIAGE",
                              tls=client_context(pki["ca.crt"]))
        [plain] = send_files([chest_file], host="127.0.0.1", port=listener.port, called_aet="CXR_TRIAGE",
                             timeout=5)
    finally:
        listener.stop()
    assert secure.ok and len(keep.committed) == 1
    assert plain.status is None and len(keep.committed) == 1  # no association without TLS


def test_mutual_tls_requires_a_client_certificate_the_ca_signed(pki: dict[str, Path], chest_file: Path) -> None:
    listener, keep = _listener(pki, mutual=True)
    try:
        attempts = {
            "signed": client_context(pki["ca.crt"], pki["client.crt"], pki["client.key"]),
            "none": client_context(pki["ca.crt"]),
            "rogue": client_context(pki["ca.crt"], pki["rogue.crt"], pki["rogue.key"]),
        }
        results = {name: send_files([chest_file], host="127.0.0.1", port=listener.port, called_aet="CXR_TRIAGE",
                                    tls=context, timeout=5)[0] for name, context in attempts.items()}
    finally:
        listener.stop()
    assert results["signed"].ok
    assert results["none"].status is None and results["rogue"].status is None
    assert len(keep.committed) == 1


def test_dcmtk_echo_and_store_over_tls(pki: dict[str, Path], chest_file: Path) -> None:
    peers.require_dcmtk()
    listener, keep = _listener(pki, mutual=True)
    signed = ("+tls", str(pki["client.key"]), str(pki["client.crt"]), "+cf", str(pki["ca.crt"]))
    rogue = ("+tls", str(pki["rogue.key"]), str(pki["rogue.crt"]), "+cf", str(pki["ca.crt"]))
    try:
        echo = peers.echoscu(listener.port, tls=signed)
        store = peers.storescu([chest_file], listener.port, tls=signed)
        refused = peers.echoscu(listener.port, tls=rogue, timeout=10)
        plain = peers.echoscu(listener.port, timeout=10)
    finally:
        listener.stop()
    assert echo.returncode == 0, echo.stdout[-2000:]
    assert store.ok, store.log[-2000:]
    assert refused.returncode != 0 and plain.returncode != 0
    assert len(keep.committed) == 1


def test_the_web_server_speaks_https_with_a_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl
    import threading

    import httpx

    from triage.settings import Settings
    from triage.web_server import web_server

    from peers import wait_for_port

    cert, key = tmp_path / "web.crt", tmp_path / "web.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert))
    port = free_port()
    settings = Settings(data_dir=tmp_path / "var", web_port=port, web_tls_cert=cert, web_tls_key=key)
    settings.ensure_dirs()
    server = web_server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port("127.0.0.1", port, 30)
        trusted = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trusted, timeout=10).status_code == 200
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the same port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        server.should_exit = True
        thread.join(timeout=10)

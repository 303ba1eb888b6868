"""The C-STORE SCP: accepts chest radiographs, hands each one to a commit callback, answers only after it.

The handler never decodes pixels or runs the model: it parses the header (to file the instance), passes the
encoded bytes exactly as received to ``Receiver.commit`` and maps what goes wrong to a DICOM status, so that the
sender keeps its copy and retries whenever we could not make the instance durable.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_io.header import InstanceHeader, InvalidIdentifier, MissingIdentifier, read_header
from dicom_io.sop_classes import ACCEPTED_TRANSFER_SYNTAXES, storage_sop_classes
from dicom_io.tls import server_context

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_PARSE = 0xC210  # "cannot understand": the dataset is not readable DICOM
STATUS_MISSING_IDENTIFIER = 0xC211  # "cannot understand": no study/instance UID to file it under
STATUS_INVALID_IDENTIFIER = 0xC212  # "cannot understand": a UID no system may store (over 64 characters)


class OutOfResources(Exception):
    """The spool or the database could not take the instance; the sender should retry later."""


@dataclass(frozen=True)
class ReceivedInstance:
    """One instance exactly as it arrived: the encoded file (preamble, meta, dataset) and its parsed header."""

    data: bytes
    header: InstanceHeader
    calling_ae: str
    peer: str


@dataclass(frozen=True)
class RejectedInstance:
    """An instance we refused; kept so that nothing received disappears without a trace."""

    data: bytes
    calling_ae: str
    peer: str
    status: int
    reason: str


@dataclass(frozen=True)
class RefusedAssociation:
    """An association turned away before any C-STORE: no instance was offered, so there is nothing to keep but
    who tried and why (``reason``: one of REFUSAL_REASONS)."""

    reason: str
    calling_ae: str
    called_ae: str
    peer: str


# Why an association was refused (the A-ASSOCIATE-RJ diagnostic, or a dropped connection), as recorded and counted.
REFUSAL_REASONS = {
    "calling-ae-not-allowed": "calling AE title not on TRIAGE_ALLOWED_CALLING_AETS",
    "called-ae-wrong": "called AE title is not this listener's",
    "association-limit": "too many associations at once",
    "user-identity": "user identity not accepted",
    "not-loopback": "a non-loopback caller while no calling AE allowlist is set",
}


class Receiver(Protocol):
    """What the listener needs from the rest of the system (wired in ``worker``)."""

    def commit(self, instance: ReceivedInstance) -> object:
        """Make the instance durable (spool + database); raise OutOfResources when that is impossible."""

    def reject(self, rejected: RejectedInstance) -> None:
        """Keep a durable record of a refused instance."""

    def refuse_association(self, refused: RefusedAssociation) -> None:
        """Keep a durable record of an association turned away."""


def refusal_reason(assoc: Association) -> str:
    """Why pynetdicom rejected ``assoc`` (EVT_REJECTED carries no reason): its acceptor checks, in its order, the
    last that applies winning (pynetdicom.acse.ACSE._negotiate_as_acceptor)."""
    ae, request = assoc.ae, assoc.requestor.primitive
    active = [other for other in ae.active_associations if other.is_acceptor]
    if len(active) > ae.maximum_associations:
        return "association-limit"
    if assoc.requestor.user_identity is not None:
        return "user-identity"
    if ae.require_called_aet and request is not None and request.called_ae_title != assoc.acceptor.ae_title.strip():
        return "called-ae-wrong"
    return "calling-ae-not-allowed"


def parse_received(data: bytes) -> InstanceHeader:
    """Parse the header of an encoded file; raise InvalidDicomError, MissingIdentifier or InvalidIdentifier."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, force=True)
        # Touch every element so a corrupt header fails here, not later in the worker.
        for _ in ds.iterall():
            pass
        return read_header(ds)
    except (MissingIdentifier, InvalidIdentifier):
        raise
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise InvalidDicomError(f"{type(exc).__name__}: {exc}") from exc


class StallWatchdog:
    """Aborts associations that have not completed a PDU for ``timeout_s``. pynetdicom reads a PDU in a blocking
    loop, so a sender dribbling one byte every few seconds would otherwise hold its association (and, with enough
    of them, every association slot) indefinitely; its own network timeout only runs between PDUs."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._last_pdu: dict[Association, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-stall-watchdog", daemon=True)

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_CONN_OPEN, self._seen), (evt.EVT_PDU_RECV, self._seen), (evt.EVT_CONN_CLOSE, self._gone)]

    def _seen(self, event: Event) -> None:
        with self._lock:
            self._last_pdu[event.assoc] = time.monotonic()

    def _gone(self, event: Event) -> None:
        with self._lock:
            self._last_pdu.pop(event.assoc, None)

    @contextmanager
    def our_turn(self, assoc: Association) -> Iterator[None]:
        """While we work on a request (a slow commit) the peer is waiting for us, not stalling: do not count it."""
        with self._lock:
            tracked = self._last_pdu.pop(assoc, None) is not None
        try:
            yield
        finally:
            if tracked:
                with self._lock:
                    self._last_pdu[assoc] = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            now = time.monotonic()
            with self._lock:
                stalled = [assoc for assoc, seen in self._last_pdu.items() if now - seen > self.timeout_s]
                for assoc in stalled:
                    self._last_pdu.pop(assoc, None)
            for assoc in stalled:
                requestor = getattr(assoc, "requestor", None)
                log.warning("aborting the association from %s: no complete PDU for %.0f s",
                            getattr(requestor, "address", "?"), self.timeout_s)
                # The reader thread is blocked in recv(): only a shutdown of the raw socket wakes it (close() alone
                # leaves the descriptor in use); the broken read then ends the association the normal way.
                raw = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
                try:
                    if raw is not None:
                        raw.shutdown(socket.SHUT_RDWR)
                except OSError:  # already gone
                    log.debug("shutdown of a stalled association's socket failed", exc_info=True)
                assoc.kill()  # stops its state machine; a thread still negotiating ends at the ACSE timeout


class StoreHandler:
    """Binds the pynetdicom events to a Receiver."""

    def __init__(self, receiver: Receiver, watchdog: StallWatchdog | None = None) -> None:
        self.receiver = receiver
        self.watchdog = watchdog

    def __call__(self, event: Event) -> int:
        with self.watchdog.our_turn(event.assoc) if self.watchdog else nullcontext():
            return self._store(event)

    def _store(self, event: Event) -> int:
        calling_ae = event.assoc.requestor.ae_title
        peer = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
        data = event.encoded_dataset()
        sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", ""))
        try:
            header = parse_received(data)
        except MissingIdentifier as exc:
            return self._reject(data, calling_ae, peer, STATUS_MISSING_IDENTIFIER, str(exc), sop_uid)
        except InvalidIdentifier as exc:
            return self._reject(data, calling_ae, peer, STATUS_INVALID_IDENTIFIER, str(exc), sop_uid[:64])
        except InvalidDicomError as exc:
            return self._reject(data, calling_ae, peer, STATUS_CANNOT_PARSE, f"unparseable dataset: {exc}", sop_uid)
        try:
            self.receiver.commit(ReceivedInstance(data=data, header=header, calling_ae=calling_ae, peer=peer))
        except OutOfResources as exc:
            log.error("C-STORE of %s from %s not committed (0xA700): %s", sop_uid, calling_ae, exc)
            return STATUS_OUT_OF_RESOURCES
        log.info("C-STORE of %s from %s committed (%d bytes)", header.sop_instance_uid, calling_ae, len(data))
        return STATUS_SUCCESS

    def _reject(self, data: bytes, calling_ae: str, peer: str, status: int, reason: str, sop_uid: str) -> int:
        log.warning("C-STORE of %s from %s refused (0x%04X): %s", sop_uid or "?", calling_ae, status, reason)
        try:
            self.receiver.reject(RejectedInstance(data, calling_ae, peer, status, reason))
        except Exception:
            log.exception("could not record the refused instance from %s", calling_ae)
        return status


class RefusalRecorder:
    """EVT_REJECTED → a log line and ``Receiver.refuse_association``; recording never breaks the listener."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def __call__(self, event: Event) -> None:
        requestor = event.assoc.requestor
        request = requestor.primitive
        self.record(RefusedAssociation(
            reason=refusal_reason(event.assoc), calling_ae=requestor.ae_title,
            called_ae=request.called_ae_title if request is not None else "",
            peer=f"{requestor.address}:{requestor.port}"))

    def record(self, refused: RefusedAssociation) -> None:
        log.warning("association from %s (calling AE %r, called AE %r) refused: %s", refused.peer,
                    refused.calling_ae, refused.called_ae, REFUSAL_REASONS.get(refused.reason, refused.reason))
        try:
            self.receiver.refuse_association(refused)
        except Exception:
            log.exception("could not record the refused association from %s", refused.peer)


class TriageAssociationServer(ThreadedAssociationServer):
    """pynetdicom's server plus what it lacks: TCP_NODELAY, a loopback-only mode, and a time limit on the TLS
    handshake (pynetdicom's runs in the accepting thread, so one silent client would hold every other)."""

    loopback_only: bool = False
    handshake_timeout_s: float = 10.0
    refusals: RefusalRecorder | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None  # listening, or serve_forever would not be asking
        client_socket, address = self.socket.accept()
        client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            client_socket.settimeout(self.handshake_timeout_s)
            try:
                client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True)
            except OSError as exc:  # socketserver drops the request quietly on OSError: say why first
                log.warning("TLS handshake with %s failed: %s", address[0], exc)
                client_socket.close()
                raise
            client_socket.settimeout(None)
        return client_socket, address

    def verify_request(self, request: object, client_address: object) -> bool:
        if not self.loopback_only:
            return True
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if ipaddress.ip_address(host).is_loopback:
            return True
        if self.refusals is not None:
            port = client_address[1] if isinstance(client_address, tuple) else ""
            self.refusals.record(RefusedAssociation("not-loopback", "", "", f"{host}:{port}"))
        return False


@dataclass
class ListenerConfig:
    ae_title: str
    host: str
    port: int
    allowed_calling_aets: list[str]
    accept_secondary_capture: bool = True
    max_associations: int = 25  # concurrent; pynetdicom's silent default is 10 (IHE/MIG deployments expect ~25)
    # Bytes we accept per PDU: large enough for few PDUs per radiograph, small enough that a slow link still
    # completes one well within the data-stall timeout (a sender may otherwise put a 100 MB image in one PDU).
    max_pdu_size: int = 4 * 1024 * 1024
    acse_timeout_s: float = 30.0  # association negotiation
    dimse_timeout_s: float = 30.0  # waiting for a DIMSE message
    network_timeout_s: float = 60.0  # an idle association is released after this
    data_stall_timeout_s: float = 60.0  # no complete PDU for this long (e.g. one byte every few seconds): abort
    tls_cert: Path | None = None  # with a certificate the listener speaks only TLS
    tls_key: Path | None = None
    tls_ca: Path | None = None  # callers must present a certificate signed by this CA


class Listener:
    """A running C-STORE SCP; ``start()`` returns once the port is bound, ``stop()`` closes it."""

    def __init__(self, config: ListenerConfig, receiver: Receiver) -> None:
        self.config = config
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_pdu_size = config.max_pdu_size
        self.ae.maximum_associations = config.max_associations
        self.ae.acse_timeout = config.acse_timeout_s
        self.ae.dimse_timeout = config.dimse_timeout_s
        self.ae.network_timeout = config.network_timeout_s
        self.watchdog = StallWatchdog(config.data_stall_timeout_s)
        self.ae.require_calling_aet = list(config.allowed_calling_aets)
        self.ae.require_called_aet = True  # a sender configured for another AE title is told so, not silently served
        self.ae.add_supported_context(Verification)
        for sop_class in storage_sop_classes(config.accept_secondary_capture):
            self.ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
        self.handler = StoreHandler(receiver, self.watchdog)
        self.refusals = RefusalRecorder(receiver)
        self.server: TriageAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.config.port

    def start(self) -> None:
        tls = (server_context(self.config.tls_cert, self.config.tls_key or self.config.tls_cert, self.config.tls_ca)
               if self.config.tls_cert else None)
        server = self.ae.make_server(
            (self.config.host, self.config.port),
            evt_handlers=[(evt.EVT_C_STORE, self.handler), (evt.EVT_REJECTED, self.refusals),
                          *self.watchdog.handlers],
            server_class=TriageAssociationServer,
            ssl_context=tls,
        )
        assert isinstance(server, TriageAssociationServer)
        server.loopback_only = not self.config.allowed_calling_aets
        server.refusals = self.refusals
        self.ae._servers.append(server)  # as AE.start_server does, so AE.shutdown() stops it
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        self._thread.start()
        self.watchdog.start()
        config = self.config
        log.info(
            "DICOM listener %s on %s:%d (%s, %s); limits: %d associations, PDU %s, timeouts ACSE %g s, DIMSE %g s, "
            "network %g s, data stall %g s",
            config.ae_title, config.host, self.port,
            "allowlist: " + ",".join(config.allowed_calling_aets) if config.allowed_calling_aets else "loopback only",
            ("TLS, client certificates required" if config.tls_ca else "TLS") if config.tls_cert else "no TLS",
            config.max_associations, f"{config.max_pdu_size} bytes" if config.max_pdu_size else "unlimited",
            config.acse_timeout_s, config.dimse_timeout_s, config.network_timeout_s, config.data_stall_timeout_s,
        )

    def serve_forever(self) -> None:
        self.start()
        assert self._thread is not None
        self._thread.join()

    def stop(self) -> None:
        self.watchdog.stop()
        self.ae.shutdown()  # shuts the server down, closes its socket and aborts open associations
        if self._thread is not None:
            self._thread.join(timeout=10)

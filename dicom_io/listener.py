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
from dataclasses import dataclass
from io import BytesIO
from typing import Protocol

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_io.header import InstanceHeader, InvalidIdentifier, MissingIdentifier, read_header
from dicom_io.sop_classes import ACCEPTED_TRANSFER_SYNTAXES, storage_sop_classes

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


class Receiver(Protocol):
    """What the listener needs from the rest of the system (wired in ``worker``)."""

    def commit(self, instance: ReceivedInstance) -> None:
        """Make the instance durable (spool + database); raise OutOfResources when that is impossible."""

    def reject(self, rejected: RejectedInstance) -> None:
        """Keep a durable record of a refused instance."""


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


class StoreHandler:
    """Binds the pynetdicom events to a Receiver."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def __call__(self, event: Event) -> int:
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


class TriageAssociationServer(ThreadedAssociationServer):
    """pynetdicom's server plus two things it lacks: TCP_NODELAY and a loopback-only mode."""

    loopback_only: bool = False

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client_socket, address = super().get_request()
        client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client_socket, address

    def verify_request(self, request: object, client_address: object) -> bool:
        if not self.loopback_only:
            return True
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if ipaddress.ip_address(host).is_loopback:
            return True
        log.warning("refused connection from %s: no calling AE allowlist, so only loopback may connect", host)
        return False


@dataclass
class ListenerConfig:
    ae_title: str
    host: str
    port: int
    allowed_calling_aets: list[str]
    accept_secondary_capture: bool = True


class Listener:
    """A running C-STORE SCP; ``start()`` returns once the port is bound, ``stop()`` closes it."""

    def __init__(self, config: ListenerConfig, receiver: Receiver) -> None:
        self.config = config
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs for 10 MB radiographs
        self.ae.require_calling_aet = list(config.allowed_calling_aets)
        self.ae.add_supported_context(Verification)
        for sop_class in storage_sop_classes(config.accept_secondary_capture):
            self.ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
        self.handler = StoreHandler(receiver)
        self.server: TriageAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.config.port

    def start(self) -> None:
        server = self.ae.make_server(
            (self.config.host, self.config.port),
            evt_handlers=[(evt.EVT_C_STORE, self.handler)],
            server_class=TriageAssociationServer,
        )
        server.loopback_only = not self.config.allowed_calling_aets
        self.ae._servers.append(server)  # as AE.start_server does, so AE.shutdown() stops it
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        self._thread.start()
        log.info(
            "DICOM listener %s on %s:%d (%s)",
            self.config.ae_title,
            self.config.host,
            self.port,
            "allowlist: " + ",".join(self.config.allowed_calling_aets)
            if self.config.allowed_calling_aets
            else "loopback only",
        )

    def serve_forever(self) -> None:
        self.start()
        assert self._thread is not None
        self._thread.join()

    def stop(self) -> None:
        self.ae.shutdown()  # shuts the server down, closes its socket and aborts open associations
        if self._thread is not None:
            self._thread.join(timeout=10)

"""A C-STORE SCU: sends files as they are stored (no transcoding), one association for a batch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext

from pynetdicom import AE
from pynetdicom.presentation import build_context

from dicom_io.files import read_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    path: Path
    status: int | None  # None: not sent (no association, or no accepted context)

    @property
    def ok(self) -> bool:
        return self.status == 0x0000


def send_files(paths: list[Path], *, host: str, port: int, called_aet: str, calling_aet: str = "CXR_SENDER",
               timeout: float = 60.0, tls: SSLContext | None = None) -> list[SendResult]:
    """C-STORE the files over one association (TLS with ``tls``, see ``dicom_io.tls.client_context``)."""
    datasets = [(path, read_dataset(path)) for path in paths]
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets}
    ae = AE(ae_title=calling_aet)
    ae.maximum_pdu_size = 0
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    requested = [build_context(sop_class, [syntax]) for sop_class, syntax in sorted(contexts)]
    assoc = ae.associate(host, port, contexts=requested, ae_title=called_aet,
                         tls_args=(tls, None) if tls is not None else None)  # type: ignore[arg-type]
    if not assoc.is_established:
        log.error("association with %s@%s:%d not established", called_aet, host, port)
        return [SendResult(path, None) for path, _ in datasets]
    results = []
    try:
        for path, ds in datasets:
            try:
                status = assoc.send_c_store(ds)
                results.append(SendResult(path, int(status.Status) if "Status" in status else None))
            except ValueError as exc:  # no accepted presentation context for this file
                log.error("%s not sent: %s", path.name, exc)
                results.append(SendResult(path, None))
    finally:
        assoc.release()
    return results

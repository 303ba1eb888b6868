"""TLS for DICOM (PS3.15 Annex B, the secure transport connection profiles): TLS 1.2 or newer, with the peer's
certificate checked against a CA when one is configured (mutual authentication)."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """The listener's context; with ``ca`` every caller must present a certificate that CA signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """An SCU's context: trusts ``ca`` (else the system store) and presents ``cert`` when given. Host names are not
    checked: DICOM peers are configured by address and identified by certificate and AE title."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context

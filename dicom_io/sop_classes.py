"""Which SOP classes and transfer syntaxes the listener negotiates: chest radiographs only."""

from __future__ import annotations

from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

RADIOGRAPH_SOP_CLASSES: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
SECONDARY_CAPTURE_SOP_CLASSES: tuple[UID, ...] = (SecondaryCaptureImageStorage,)

# Stored as received, never transcoded: accept every transfer syntax pydicom knows, so a PACS never has to
# decompress for us. pynetdicom caps an SCP context at a sensible subset when it is a very long list, so we
# keep pydicom's own list (about 35 syntaxes).
ACCEPTED_TRANSFER_SYNTAXES: list[str] = [str(uid) for uid in AllTransferSyntaxes]


def storage_sop_classes(accept_secondary_capture: bool) -> tuple[UID, ...]:
    """The storage SOP classes a site accepts; secondary capture is optional because it rarely carries a view."""
    if accept_secondary_capture:
        return RADIOGRAPH_SOP_CLASSES + SECONDARY_CAPTURE_SOP_CLASSES
    return RADIOGRAPH_SOP_CLASSES

"""Reading DICOM files from disk into the exact bytes a C-STORE would have delivered (for backfill and the demo)."""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

log = logging.getLogger(__name__)


def has_file_meta(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def read_dataset(path: Path) -> Dataset:
    """Read a file, accepting old files without preamble or file meta (with a logged warning)."""
    ds = dcmread(path, force=True)
    transfer_syntax = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
    if not transfer_syntax:
        log.warning("%s has no file meta information; read with force, transfer syntax inferred", path.name)
        meta = FileMetaDataset()
        if ds.original_encoding[0]:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian if ds.original_encoding[1] else ExplicitVRBigEndian
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
    return ds


def encoded_file(path: Path) -> bytes:
    """The file's bytes as a conformant DICOM file (preamble + meta); files that already are pass unchanged."""
    data = path.read_bytes()
    if has_file_meta(data):
        return data
    return dataset_bytes(read_dataset(path))


def dataset_bytes(ds: Dataset) -> bytes:
    """A dataset as the bytes of a conformant DICOM file (preamble + file meta), as it is spooled or sent."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()

"""Real chest pixels written in every encoding we can produce here, for round-trip tests and the benchmark."""

from __future__ import annotations

import io
from copy import deepcopy
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_io.synthetic import chest_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LOSSLESS = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
            RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1, JPEGLossless]
LOSSY = [JPEGLSNearLossless, JPEG2000]
PYDICOM_ENCODED = {RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLSNearLossless, JPEG2000}
GDCM_ENCODED = {JPEGLosslessSV1: "JPEGLosslessProcess14_1", JPEGLossless: "JPEGLosslessProcess14"}


def real_chest_12bit(max_side: int = 768) -> np.ndarray | None:
    """The first NORMAL full-resolution JPEG of the Kermany val split, spread to 12 bits; None if absent."""
    files = sorted((SHARED / "kermany-val-fullres" / "NORMAL").glob("*.jpeg"))
    if not files:
        return None
    image = Image.open(files[0]).convert("L")
    image.thumbnail((max_side, max_side))
    gray = np.asarray(image, dtype=np.uint16)
    return (gray << 4) | (gray >> 4)  # 0..255 → 0..4095, full 12-bit range


def dataset_from_pixels(pixels: np.ndarray, *, monochrome1: bool = False, bits_stored: int = 12,
                        window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None,
                        signed: bool = False) -> Dataset:
    """A CR dataset holding ``pixels`` (stored values; MONOCHROME1 stores them inverted)."""
    ds = chest_dataset(with_pixels=False)
    stored = pixels.astype(np.int32)
    top = 2**bits_stored - 1
    if monochrome1:
        stored = top - stored
    if signed:
        stored = stored - 2 ** (bits_stored - 1)
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    return ds


def encode(ds: Dataset, syntax: UID, workdir: Path) -> Dataset:
    """``ds`` written in ``syntax`` and read back from disk, as a receiver would see it."""
    path = workdir / f"{syntax}.dcm"
    if syntax in PYDICOM_ENCODED:
        copy = dcmread(_bytes(ds))
        kwargs = {"jls_error": 2} if syntax == JPEGLSNearLossless else {}
        if syntax == JPEG2000:
            kwargs = {"j2k_cr": [20]}
        copy.compress(syntax, **kwargs)
        copy.save_as(path, enforce_file_format=True)
    elif syntax in GDCM_ENCODED:
        _gdcm_transcode(ds, syntax, path, workdir)
    elif syntax == ExplicitVRBigEndian:
        copy = deepcopy(ds)  # made in memory, so pydicom lets us choose its encoding
        dtype = ">i2" if copy.PixelRepresentation else ">u2"
        copy.PixelData = ds.pixel_array.astype(dtype).tobytes()
        copy.file_meta.TransferSyntaxUID = syntax
        copy.save_as(path, enforce_file_format=True, little_endian=False, implicit_vr=False)
    elif syntax == JPEGBaseline8Bit:
        copy = dcmread(_bytes(ds))
        eight = (copy.pixel_array >> (int(copy.BitsStored) - 8)).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(eight, mode="L").save(buffer, format="JPEG", quality=95)
        copy.BitsAllocated, copy.BitsStored, copy.HighBit = 8, 8, 7
        copy.PixelData = encapsulate([buffer.getvalue()])
        copy["PixelData"].VR = "OB"
        copy.file_meta.TransferSyntaxUID = syntax
        copy.save_as(path, enforce_file_format=True)
    else:
        copy = dcmread(_bytes(ds))
        copy.file_meta.TransferSyntaxUID = syntax
        copy.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return dcmread(path)


def _bytes(ds: Dataset) -> io.BytesIO:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


def _gdcm_transcode(ds: Dataset, syntax: UID, path: Path, workdir: Path) -> None:
    import gdcm

    source = workdir / f"source-{syntax}.dcm"
    ds.save_as(source, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError("gdcm could not read the source")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, GDCM_ENCODED[syntax])))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"gdcm could not encode {syntax.name}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError("gdcm could not write")


def lung_and_mediastinum(image: np.ndarray) -> tuple[float, float]:
    """Mean brightness of the right lung field and of the mediastinum (central band)."""
    h, w = image.shape
    lung = image[int(h * 0.3):int(h * 0.6), int(w * 0.15):int(w * 0.35)]
    mediastinum = image[int(h * 0.3):int(h * 0.6), int(w * 0.46):int(w * 0.54)]
    return float(lung.mean()), float(mediastinum.mean())

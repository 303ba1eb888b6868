"""From stored pixels to the picture a radiologist sees: float32 in [0, 1], high = bright.

Order as in PS3.3 C.11: modality LUT (rescale or LUT sequence), VOI LUT (sequence or window, the first when
several), then MONOCHROME1 / Presentation LUT Shape INVERSE turned into "high = bright". All look-up work is
pydicom's own (`apply_modality_lut`, `apply_voi_lut`); this module only decides what to apply and normalises.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

log = logging.getLogger(__name__)

ROBUST_WINDOW_PERCENTILES = (0.5, 99.5)
_PROBE = np.array([-1e12, 1e12], dtype=np.float64)


class PixelDataError(ValueError):
    """The pixels cannot be turned into an image; ``reason`` is a stable code for the worklist."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_pixels(ds: Dataset) -> np.ndarray:
    """The first frame as stored (grayscale; colour secondary captures reduced to luminance)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelDataError("NO_PIXEL_DATA", "the dataset has no pixel data")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        if rows <= 0 or columns <= 0:
            raise ValueError(f"image size {rows}x{columns}")
        arr = ds.pixel_array
    except PixelDataError:
        raise
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError on corrupt data
        raise PixelDataError("UNREADABLE_PIXEL_DATA", f"{type(exc).__name__}: {exc}") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # pydicom already converted YBR to RGB; ITU-R BT.601 luma.
        arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    if arr.ndim != 2:
        raise PixelDataError("UNREADABLE_PIXEL_DATA", f"unexpected pixel array shape {arr.shape}")
    return arr


def _padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    padding = ds.get("PixelPaddingValue")
    if padding is None or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    low, high = sorted((int(padding), int(limit if limit is not None else padding)))
    mask = (stored >= low) & (stored <= high)
    return mask if mask.any() else None


def _has_voi(ds: Dataset) -> bool:
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """The range the VOI transform maps into, found by probing pydicom's own transform with extremes."""
    if ds.get("VOILUTSequence"):
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    low, high = sorted(float(v) for v in apply_voi_lut(_PROBE.copy(), ds, index=0))
    return low, high


def describe_window(ds: Dataset) -> str:
    """How the VOI was chosen, for logs and the inspect command."""
    if ds.get("VOILUTSequence"):
        return "VOI LUT sequence"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = ds.WindowCenter, ds.WindowWidth
        center = center[0] if ds["WindowCenter"].VM > 1 else center
        width = width[0] if ds["WindowWidth"].VM > 1 else width
        return f"C{float(center):g}/W{float(width):g} {ds.get('VOILUTFunction', 'LINEAR')}"
    return "robust percentile window"


def is_inverted(ds: Dataset) -> bool:
    """True when low stored values mean bright (MONOCHROME1, or an INVERSE presentation LUT on MONOCHROME2)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME1":
        return True
    return photometric == "MONOCHROME2" and shape == "INVERSE"


def display_image(ds: Dataset) -> np.ndarray:
    """The display image as float32 in [0, 1], high = bright; raise PixelDataError when there is none."""
    stored = decode_pixels(ds)
    padding = _padding_mask(ds, stored) if stored.dtype.kind in "iu" else None
    try:
        values = apply_modality_lut(stored, ds) if int(ds.get("SamplesPerPixel", 1)) == 1 else stored
        if _has_voi(ds) and int(ds.get("SamplesPerPixel", 1)) == 1:
            low, high = _voi_output_range(ds)
            values = apply_voi_lut(values, ds, index=0)
        else:
            inside = values[~padding] if padding is not None else values
            low, high = (float(v) for v in np.percentile(inside, ROBUST_WINDOW_PERCENTILES))
    except Exception as exc:
        raise PixelDataError("UNREADABLE_PIXEL_DATA", f"LUT/window failed: {type(exc).__name__}: {exc}") from exc
    span = high - low if high > low else 1.0
    image = np.clip((np.asarray(values, dtype=np.float32) - np.float32(low)) / np.float32(span), 0.0, 1.0)
    if is_inverted(ds):
        image = 1.0 - image
    if padding is not None:
        image[padding] = 0.0
    return image.astype(np.float32, copy=False)

"""From stored pixels to the picture a radiologist sees: float32 in [0, 1], high = bright.

Order as in PS3.3 C.11: modality LUT (rescale or LUT sequence), VOI LUT (sequence or window, the first when
several; LINEAR, LINEAR_EXACT or SIGMOID), then MONOCHROME1 / Presentation LUT Shape INVERSE turned into
"high = bright". The look-up work is pydicom's own (`apply_modality_lut`, `apply_voi_lut`); this module decides
what to apply, checks the pixel data against the header, and normalises.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicom_io.polarity import looks_inverted
from dicom_io.reasons import Reason

log = logging.getLogger(__name__)

ROBUST_WINDOW_PERCENTILES = (1.0, 99.0)
BLANK_SPREAD = 0.01  # display images whose standard deviation is below this share of the range are blank
_PROBE = np.array([-1e12, 1e12], dtype=np.float64)


class PixelDataError(ValueError):
    """The pixels cannot be turned into an image; ``reason`` is a stable code for the worklist."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Rendering:
    """A display image and how it was made (for the record, the inspect command and the worklist)."""

    image: np.ndarray  # float32, [0, 1], high = bright
    window: str
    inverted: bool  # MONOCHROME1 or INVERSE presentation applied
    polarity_corrected: bool  # the image content contradicted the photometric tag, and was flipped

    @property
    def notes(self) -> tuple[str, ...]:
        if self.polarity_corrected:
            return ("display polarity corrected: image content contradicts PhotometricInterpretation",)
        return ()


def _check_native_length(ds: Dataset) -> None:
    """Refuse native pixel data whose length disagrees with the header: the picture would be garbage."""
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None or syntax.is_compressed:
        return
    if "PixelData" not in ds:
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.BitsAllocated)
    samples = int(ds.get("SamplesPerPixel", 1))
    pixels = int(ds.Rows) * int(ds.Columns) * samples * frames
    expected = math.ceil(pixels / 8) if bits == 1 else pixels * (bits // 8)
    actual = len(ds.PixelData)
    if actual not in (expected, expected + 1):  # one pad byte keeps the value length even
        raise PixelDataError(Reason.UNREADABLE_PIXEL_DATA,
                             f"pixel data is {actual} bytes, the header implies {expected}")


def decode_pixels(ds: Dataset) -> np.ndarray:
    """The first frame as stored (grayscale; colour secondary captures reduced to luminance)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelDataError(Reason.NO_PIXEL_DATA, "the dataset has no pixel data")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        if rows <= 0 or columns <= 0:
            raise ValueError(f"image size {rows}x{columns}")
        _check_native_length(ds)
        arr = ds.pixel_array
    except PixelDataError:
        raise
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError on corrupt data
        raise PixelDataError(Reason.UNREADABLE_PIXEL_DATA, f"{type(exc).__name__}: {exc}") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # pydicom already converted YBR to RGB; ITU-R BT.601 luma.
        arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    if arr.ndim != 2:
        raise PixelDataError(Reason.UNREADABLE_PIXEL_DATA, f"unexpected pixel array shape {arr.shape}")
    return arr


def _padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    padding = ds.get("PixelPaddingValue")
    if padding is None or stored.dtype.kind not in "iu" or int(ds.get("SamplesPerPixel", 1)) != 1:
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
    with np.errstate(over="ignore"):  # SIGMOID overflows to its asymptotes, which is the point
        low, high = sorted(float(v) for v in apply_voi_lut(_PROBE.copy(), ds, index=0))
    return low, high


def _robust_window(values: np.ndarray, padding: np.ndarray | None) -> tuple[float, float]:
    """Percentiles inside the exposed area: padding and the values pinned at the extremes (collimator
    shadows, burnt-out background, burnt-in black borders) do not vote."""
    inside = values[~padding] if padding is not None else values.ravel()
    lowest, highest = inside.min(), inside.max()
    exposed = inside[(inside > lowest) & (inside < highest)]
    if exposed.size < inside.size // 10:
        exposed = inside
    low, high = (float(v) for v in np.percentile(exposed, ROBUST_WINDOW_PERCENTILES))
    return low, high


def describe_window(ds: Dataset) -> str:
    """How the VOI was chosen, for logs and the inspect command."""
    if ds.get("VOILUTSequence"):
        return "VOI LUT sequence"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center = ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter
        width = ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
        return f"C{float(center):g}/W{float(width):g} {ds.get('VOILUTFunction', 'LINEAR')}"
    return "robust window (1st-99th percentile of the exposed area)"


def is_inverted(ds: Dataset) -> bool:
    """True when low stored values mean bright (MONOCHROME1, or an INVERSE presentation LUT on MONOCHROME2)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME1":
        return True
    return photometric == "MONOCHROME2" and shape == "INVERSE"


def render(ds: Dataset, *, check_polarity: bool = True) -> Rendering:
    """The display image with its provenance; raise PixelDataError when there is no usable image.

    ``check_polarity`` flips an image whose content is plainly inverted relative to its tag; it is meant for
    frontal chest radiographs, the only images the model is given.
    """
    stored = decode_pixels(ds)
    padding = _padding_mask(ds, stored)
    grayscale = int(ds.get("SamplesPerPixel", 1)) == 1
    try:
        values = apply_modality_lut(stored, ds) if grayscale else stored
        if grayscale and _has_voi(ds):
            low, high = _voi_output_range(ds)
            values = apply_voi_lut(values, ds, index=0)
        else:
            low, high = _robust_window(np.asarray(values), padding)
    except Exception as exc:
        raise PixelDataError(Reason.UNREADABLE_PIXEL_DATA, f"LUT/window failed: {type(exc).__name__}: {exc}") from exc
    values = np.asarray(values, dtype=np.float64)
    if not (math.isfinite(low) and math.isfinite(high)) or not np.isfinite(values).all():
        raise PixelDataError(Reason.BLANK_IMAGE, "non-finite values after the rescale or window (header values such as "
                                          "WindowCenter, WindowWidth, RescaleSlope out of range)")
    span = high - low if high > low else 1.0
    image = np.clip((values.astype(np.float32) - np.float32(low)) / np.float32(span), 0.0, 1.0)
    _refuse_blank(image, padding)
    inverted = is_inverted(ds)
    if inverted:
        image = 1.0 - image
    corrected = False
    if check_polarity and looks_inverted(image):
        image, corrected = 1.0 - image, True
        log.warning("display polarity corrected for %s: content contradicts %s", ds.get("SOPInstanceUID", "?"),
                    ds.get("PhotometricInterpretation", "?"))
    if padding is not None:
        image[padding] = 0.0
    return Rendering(image.astype(np.float32, copy=False), describe_window(ds) if grayscale else "robust window",
                     inverted, corrected)


def _refuse_blank(image: np.ndarray, padding: np.ndarray | None) -> None:
    """A constant or nearly constant display (a broken window, an empty exposure) carries nothing to score; a
    network would still give it a confident number, so it must end with a reason code instead."""
    inside = image[~padding] if padding is not None else image.ravel()
    spread = float(inside.std()) if inside.size else 0.0
    if spread < BLANK_SPREAD:
        raise PixelDataError(Reason.BLANK_IMAGE, f"the display image is constant or nearly so (standard deviation "
                                          f"{spread:.4f} of the display range)")


def display_image(ds: Dataset) -> np.ndarray:
    """The display image as float32 in [0, 1], high = bright; raise PixelDataError when there is none."""
    return render(ds).image

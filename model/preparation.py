"""Dataset or file → decision → display image → model input: the one path used by the worker, `inspect`,
`evaluate` and training, so what a person inspects or evaluates is exactly what the model is given in service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset

from dicom_io.checks import Assessment, assess
from dicom_io.display import PixelDataError, Rendering, render
from dicom_io.files import read_dataset
from model.preprocess import PreprocessSpec, to_model_input


@dataclass(frozen=True)
class Prepared:
    assessment: Assessment
    rendering: Rendering | None = None  # None when the instance is not analysable
    model_input: torch.Tensor | None = None  # (3, size, size)

    @property
    def notes(self) -> tuple[str, ...]:
        """Everything assumed or corrected on the way, for the instance record."""
        return self.assessment.assumptions + (self.rendering.notes if self.rendering else ())


def prepare(ds: Dataset, spec: PreprocessSpec) -> Prepared:
    """Raise dicom_io.display.PixelDataError when an analysable instance has no usable pixels."""
    assessment = assess(ds)
    if not assessment.analysable:
        return Prepared(assessment)
    rendering = render(ds)
    return Prepared(assessment, rendering, to_model_input(rendering.image, spec))


class NotAnalysable(ValueError):
    """The worker would not score this file; ``reason`` is the worker's reason code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def file_display(path: Path) -> np.ndarray:
    """The 2-D float32 display image in [0, 1] the model input is made from.

    DICOM goes through the worker's own decision (``assess``) and rendering; a file the worker would refuse
    raises NotAnalysable with the worker's reason code (``LATERAL_VIEW``, ``NOT_CHEST``, …). PNG and JPEG carry no
    header to decide from, so they are taken as frontal chest films, read as grayscale.
    """
    path = Path(path)
    if is_dicom(path):
        ds = read_dataset(path)
        assessment = assess(ds)
        if not assessment.analysable:
            raise NotAnalysable(assessment.reason or "NOT_ANALYSABLE")
        try:
            return render(ds).image
        except PixelDataError as exc:
            raise NotAnalysable(exc.reason, exc.detail) from exc
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float32)
            peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
            return np.clip(array / peak, 0.0, 1.0).astype(np.float32)
        return np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255.0)

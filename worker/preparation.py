"""Dataset → decision → display image → model input: the one path used by the worker, `inspect` and training
data made from DICOM, so what a person inspects is exactly what the model is given."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydicom.dataset import Dataset

from dicom_io.checks import Assessment, assess
from dicom_io.display import Rendering, render
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

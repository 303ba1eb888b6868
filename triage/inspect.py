"""`cxr-triage inspect`: what the model would be given for each file, and why (no patient data printed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dicom_io.display import PixelDataError, describe_window
from dicom_io.files import read_dataset
from dicom_io.reasons import Reason
from model.preparation import prepare
from model.preprocess import PreprocessSpec


@dataclass
class Inspection:
    path: str
    analysable: bool
    reason: str | None
    detail: str | None
    notes: list[str]
    transfer_syntax: str | None
    photometric: str | None
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int | None
    window: str | None
    rows: int | None
    columns: int | None
    display_png: str | None = None
    input_png: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _int(ds: object, keyword: str) -> int | None:
    value = getattr(ds, keyword, None)
    return int(value) if value is not None else None


def _to_png(image: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L").save(path)
    return str(path)


def inspect_file(path: Path, spec: PreprocessSpec, png_dir: Path | None = None) -> Inspection:
    try:
        ds = read_dataset(path)
    except Exception as exc:
        return Inspection(str(path), False, Reason.UNREADABLE_DICOM, f"{type(exc).__name__}: {exc}", [], None, None,
                          None, None, None, None, None, None)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    result = Inspection(
        path=str(path), analysable=False, reason=None, detail=None, notes=[],
        transfer_syntax=f"{syntax} ({syntax.name})" if syntax else None,
        photometric=str(ds.get("PhotometricInterpretation", "")) or None,
        bits_allocated=_int(ds, "BitsAllocated"), bits_stored=_int(ds, "BitsStored"),
        pixel_representation=_int(ds, "PixelRepresentation"),
        window=describe_window(ds) if "PixelData" in ds else None,
        rows=_int(ds, "Rows"), columns=_int(ds, "Columns"),
    )
    try:
        prepared = prepare(ds, spec)
    except PixelDataError as exc:
        result.reason, result.detail = exc.reason, exc.detail
        return result
    result.analysable = prepared.model_input is not None
    result.reason = prepared.assessment.reason
    result.notes = list(prepared.notes)
    if png_dir is not None and prepared.rendering is not None and prepared.model_input is not None:
        # Undo the normalisation of one channel: the picture exactly as the network receives it (spec.size²).
        channel = prepared.model_input[0].numpy() * spec.std[0] + spec.mean[0]
        result.display_png = _to_png(prepared.rendering.image, png_dir / f"{path.stem}.display.png")
        result.input_png = _to_png(channel, png_dir / f"{path.stem}.input.png")
    return result

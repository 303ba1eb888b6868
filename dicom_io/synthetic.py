"""Chest-like DICOM files made from nothing, for the demo and tests when no real images are at hand.

They are plainly synthetic (a body outline, two dark lung fields, ribs, optionally an opacity) and carry
no real patient; their purpose is to exercise the whole path, not to be diagnosed.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid


def chest_pixels(rows: int = 512, columns: int = 448, *, opacity: bool = False, seed: int = 0) -> np.ndarray:
    """A 12-bit, high = dense (bright) image with lungs darker than soft tissue and bone."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows * 0.52, columns / 2
    body = (((x - cx) / (columns * 0.46)) ** 2 + ((y - cy) / (rows * 0.55)) ** 2) < 1
    image = np.where(body, 2600.0, 300.0)
    for side in (-1, 1):
        lung = (((x - cx - side * columns * 0.2) / (columns * 0.15)) ** 2 + ((y - rows * 0.45) / (rows * 0.3)) ** 2) < 1
        image = np.where(lung, 900.0, image)
    ribs = (np.sin(y / rows * 40) > 0.85) & body
    image = image + ribs * 500
    if opacity:
        blob = (((x - cx - columns * 0.2) / (columns * 0.08)) ** 2 + ((y - rows * 0.55) / (rows * 0.1)) ** 2) < 1
        image = np.where(blob, image + 1200, image)
    image += rng.normal(0, 40, image.shape)
    return np.clip(image, 0, 4095).astype(np.uint16)


def chest_dataset(*, patient_index: int = 1, opacity: bool = False, view: str = "PA", body_part: str = "CHEST",
                  study_uid: str | None = None, sop_uid: str | None = None, monochrome1: bool = False,
                  with_pixels: bool = True, seed: int = 0, rows: int = 512, columns: int = 448) -> Dataset:
    """A CR instance in explicit VR little endian, MONOCHROME2 (or MONOCHROME1 with inverted pixels)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = f"SYNTHETIC^PATIENT{patient_index}"
    ds.PatientID = f"SYN{patient_index:04d}"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = f"ACC{patient_index:05d}"
    ds.StudyDate = date.today().strftime("%Y%m%d")
    ds.StudyTime = "120000"
    ds.StudyDescription = "XR CHEST (synthetic)"
    ds.Modality = "CR"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if with_pixels:
        pixels = chest_pixels(rows, columns, opacity=opacity, seed=seed)
        ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
        if monochrome1:
            pixels = (4095 - pixels).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = 2048
        ds.WindowWidth = 4096
        ds.PixelData = pixels.tobytes()
    return ds


def write_samples(folder: Path, count: int = 4) -> list[Path]:
    """A few studies, every other one with a synthetic opacity."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(1, count + 1):
        ds = chest_dataset(patient_index=index, opacity=index % 2 == 0, seed=index)
        path = folder / f"synthetic-chest-{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

"""The Grad-CAM heat map of one image as a DICOM Secondary Capture in the image's study, labelled not for diagnosis.

Why a Secondary Capture and not a Grayscale Softcopy Presentation State: GSPS can only window the original grey
pixels and draw graphics and text over them; it cannot carry a blended colour map. The heat map is a colour picture
(grey image with a colour ramp blended on top, plus a burned-in label), which only an image object can hold, so the
PACS gets it as a separate, derived RGB image in its own series.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_io.report_sr import header_for_study_copy

SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "AI heat map (cxr-triage) - NOT FOR DIAGNOSIS"
IMAGE_COMMENTS = ("NOT FOR DIAGNOSIS. cxr-triage Grad-CAM heat map: where the model's evidence lies, "
                  "for triage support only.")
DERIVATION_DESCRIPTION = ("NOT FOR DIAGNOSIS: downscaled display image with a Grad-CAM colour map blended on top "
                          "and a text label burned in")
_PLACEHOLDER_ORIENTATION = ("L", "F")


def _orientation(source: Dataset) -> tuple[tuple[str, str], bool]:
    """The source's Patient Orientation (the map is the source downscaled, never flipped), and whether it was known.

    highdicom needs a single-letter orientation for a patient image; when the source has none (or an oblique one),
    a placeholder is passed and the attribute emptied afterwards (Type 2: unknown) rather than guessing."""
    values = [str(value) for value in source.get("PatientOrientation") or []]
    try:
        if len(values) == 2:
            hd.PatientOrientationValuesBiped(values[0]), hd.PatientOrientationValuesBiped(values[1])
            return (values[0], values[1]), True
    except ValueError:
        pass
    return _PLACEHOLDER_ORIENTATION, False


def build_heatmap_capture(source: Dataset, rgb: np.ndarray, *, series_instance_uid: str, sop_instance_uid: str,
                          instance_number: int, manufacturer: str = "cxr-triage") -> Dataset:
    """An RGB Secondary Capture of the heat map `rgb` (H, W, 3, uint8) drawn over `source`, in `source`'s study.

    It is marked BurnedInAnnotation YES (the label is part of the pixels) and says NOT FOR DIAGNOSIS in its series
    description, image comments and derivation description, and references `source` as its source image.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
        raise ValueError("the heat map must be an (H, W, 3) uint8 RGB array")
    header, names = header_for_study_copy(source)
    orientation, orientation_known = _orientation(source)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=orientation,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name="cxr-triage",
    )
    for keyword, value in names.items():
        setattr(capture, keyword, value)
    if not orientation_known:
        capture.PatientOrientation = None  # type: ignore[assignment]  # Type 2: present and empty = unknown
    # Only images accepted as chest radiographs are scored, so only they have heat maps. Naming the (unpaired) body
    # part is what lets Laterality, Type 2C in General Series, be absent.
    capture.BodyPartExamined = "CHEST"
    capture.BurnedInAnnotation = "YES"
    capture.ImageComments = IMAGE_COMMENTS
    capture.DerivationDescription = DERIVATION_DESCRIPTION
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)]
    capture.SourceImageSequence = [reference]
    return capture

"""Display image and analysability decisions on generated and real chest radiographs."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread

from dicom_io.checks import assess
from dicom_io.display import PixelDataError, display_image
from dicom_io.files import read_dataset
from dicom_io.synthetic import chest_dataset

from conftest import real_dicom_files


def lung_and_mediastinum(image: np.ndarray) -> tuple[float, float]:
    """Mean brightness of the right lung field and of the mediastinum (central band)."""
    h, w = image.shape
    lung = image[int(h * 0.3):int(h * 0.6), int(w * 0.15):int(w * 0.35)]
    mediastinum = image[int(h * 0.3):int(h * 0.6), int(w * 0.46):int(w * 0.54)]
    return float(lung.mean()), float(mediastinum.mean())


def test_monochrome1_and_monochrome2_give_the_same_display_image() -> None:
    mono2 = display_image(chest_dataset(seed=5))
    mono1 = display_image(chest_dataset(seed=5, monochrome1=True))
    assert mono2.dtype == np.float32 and mono2.min() >= 0.0 and mono2.max() <= 1.0
    np.testing.assert_allclose(mono1, mono2, atol=1e-3)
    lung, mediastinum = lung_and_mediastinum(mono2)
    assert lung < mediastinum - 0.2


def test_window_from_the_file_is_applied() -> None:
    ds = chest_dataset(seed=1)
    full = display_image(ds)
    ds.WindowCenter, ds.WindowWidth = 900, 200  # a narrow window on the lungs saturates the body
    narrow = display_image(ds)
    assert (narrow >= 0.999).mean() > (full >= 0.999).mean() + 0.3


def test_real_files_give_lungs_darker_than_the_mediastinum() -> None:
    for path in real_dicom_files():
        if path.name == "Fake_MONOHR1.dcm":
            continue  # its MONOCHROME1 tag is wrong on purpose (issue "pixel pipeline" detects it)
        image = display_image(read_dataset(path))
        lung, mediastinum = lung_and_mediastinum(image)
        assert lung < mediastinum, f"{path.name}: lung {lung:.2f} vs mediastinum {mediastinum:.2f}"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ViewPosition": "LL"}, "LATERAL_VIEW"),
        ({"BodyPartExamined": "KNEE"}, "NOT_CHEST"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "UNSUPPORTED_SOP_CLASS"),
        ({"NumberOfFrames": 2}, "MULTIFRAME"),
    ],
)
def test_not_analysable_instances_have_a_reason(changes: dict[str, object], reason: str) -> None:
    ds = chest_dataset()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    assessment = assess(ds)
    assert not assessment.analysable and assessment.reason == reason


def test_missing_tags_are_assumed_and_recorded() -> None:
    ds = chest_dataset()
    del ds.ViewPosition, ds.BodyPartExamined
    ds.StudyDescription = "XR"
    assessment = assess(ds)
    assert assessment.analysable
    assert set(assessment.assumptions) == {"body part assumed chest", "view assumed frontal"}


def test_missing_and_truncated_pixels_raise_a_reason() -> None:
    ds = chest_dataset(with_pixels=False)
    assert assess(ds).reason == "NO_PIXEL_DATA"
    truncated = chest_dataset()
    truncated.PixelData = truncated.PixelData[:1000]
    with pytest.raises(PixelDataError) as error:
        display_image(truncated)
    assert error.value.reason == "UNREADABLE_PIXEL_DATA"


def test_file_without_meta_is_read_with_its_transfer_syntax() -> None:
    path = next((p for p in real_dicom_files() if p.name == "CR-MONO1-10-chest.dcm"), None)
    if path is None:
        pytest.skip("CR-MONO1-10-chest.dcm is not in ../shared/data/dicom")
    from pydicom.errors import InvalidDicomError

    with pytest.raises(InvalidDicomError):
        dcmread(path)  # plain pydicom refuses it
    ds = read_dataset(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert display_image(ds).shape == (440, 440)


@pytest.mark.parametrize("changes", [
    {"WindowCenter": "1e400"},  # parses as infinity: the whole display collapses
    {"RescaleSlope": 0.0, "RescaleIntercept": 0.0},  # every value equal after the modality LUT
    {"pixels": 1000},  # an exposure with nothing in it
])
def test_a_blank_display_ends_with_a_reason_not_a_score(changes: dict[str, object]) -> None:
    ds = chest_dataset(rows=64, columns=48)
    for keyword, value in changes.items():
        if keyword == "pixels":
            ds.PixelData = np.full((64, 48), value, dtype=np.uint16).tobytes()
        else:
            setattr(ds, keyword, value)
    with pytest.raises(PixelDataError) as raised:
        display_image(ds)
    assert raised.value.reason == "BLANK_IMAGE"
    display_image(chest_dataset(rows=64, columns=48))  # the same film with sane values is an image


def test_every_reason_code_has_its_words_on_the_worklist() -> None:
    """The codes are made in dicom_io and the worker; the page, API and CLI show them with words from one table."""
    from dicom_io.reasons import Reason
    from worklist.presentation import REASON_TEXT

    assert {code.value for code in Reason} - set(REASON_TEXT) == set()
    assert set(REASON_TEXT) - {code.value for code in Reason} == set()  # no words for a code nobody makes


def test_every_reason_code_has_its_meaning_in_the_structured_report() -> None:
    from dicom_io.reasons import Reason
    from dicom_io.report_sr import REASON_MEANINGS

    assert set(Reason) == set(REASON_MEANINGS)

"""dicom_io.display (and dicom_io.files' reading): every encoding decodes to the same pixels, every LUT path to the
right picture, MONOCHROME1 and a file's window are honoured, and pixel data that cannot make a picture ends with a
reason, never a score. Generated and real chest radiographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, JPEGBaseline8Bit

from dicom_io.checks import assess
from dicom_io.display import PixelDataError, display_image, render
from dicom_io.files import read_dataset
from dicom_io.synthetic import chest_dataset

from conftest import SHARED_DATA, real_dicom_files
from pixel_samples import LOSSLESS, LOSSY, dataset_from_pixels, encode, lung_and_mediastinum, real_chest_12bit


@pytest.fixture(scope="module")
def chest() -> np.ndarray:
    pixels = real_chest_12bit()
    if pixels is None:
        pytest.skip(f"{SHARED_DATA / 'kermany-val-fullres'} is absent: real chest pixels are needed")
    return pixels


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda uid: UID(uid).name)
@pytest.mark.parametrize("monochrome1", [False, True], ids=["MONOCHROME2", "MONOCHROME1"])
def test_lossless_round_trip_is_exact_and_displays_alike(chest: np.ndarray, syntax: UID, monochrome1: bool,
                                                         tmp_path: Path) -> None:
    original = dataset_from_pixels(chest, monochrome1=monochrome1, window=(2048, 4096))
    received = encode(original, syntax, tmp_path)
    assert received.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(received.pixel_array, original.pixel_array)
    reference = display_image(dataset_from_pixels(chest, window=(2048, 4096)))
    np.testing.assert_allclose(display_image(received), reference, atol=1e-6)


@pytest.mark.parametrize("syntax", LOSSY + [JPEGBaseline8Bit], ids=lambda uid: UID(uid).name)
def test_lossy_encodings_display_close_to_the_original(chest: np.ndarray, syntax: UID, tmp_path: Path) -> None:
    original = dataset_from_pixels(chest, monochrome1=True)
    received = encode(original, syntax, tmp_path)
    difference = np.abs(display_image(received) - display_image(original))
    assert difference.mean() < 0.01 and np.percentile(difference, 99) < 0.05


def test_rescale_signed_and_bit_depths_give_the_same_picture(chest: np.ndarray) -> None:
    reference = display_image(dataset_from_pixels(chest, window=(2048, 4096)))
    # Stored signed, with an intercept that brings the values back to 0..4095.
    signed = dataset_from_pixels(chest, signed=True, rescale=(1, 2048), window=(2048, 4096))
    np.testing.assert_allclose(display_image(signed), reference, atol=1e-6)
    # Stored halved with slope 2: the window applies to rescaled values.
    halved = dataset_from_pixels(chest // 2, bits_stored=11, rescale=(2, 0), window=(2048, 4096))
    assert np.abs(display_image(halved) - reference).max() <= 2 / 4096 + 1e-6
    for bits in (8, 10, 12, 15, 16):
        scaled = (chest.astype(np.int64) * (2**bits - 1) // 4095).astype(np.uint16)
        image = display_image(dataset_from_pixels(scaled, bits_stored=bits))
        lung, mediastinum = lung_and_mediastinum(image)
        assert lung < mediastinum, bits


def test_voi_functions_and_sequences_are_applied(chest: np.ndarray) -> None:
    linear = dataset_from_pixels(chest, window=(1500, 1000))
    sigmoid = dataset_from_pixels(chest, window=(1500, 1000))
    sigmoid.VOILUTFunction = "SIGMOID"
    assert (display_image(linear) == 1.0).mean() > (display_image(sigmoid) == 1.0).mean()  # sigmoid never clips
    several = dataset_from_pixels(chest)
    several.WindowCenter, several.WindowWidth = [1500, 3000], [1000, 200]  # the first one counts
    np.testing.assert_allclose(display_image(several), display_image(linear), atol=1e-6)
    lut = dataset_from_pixels(chest)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [min(65535, v * 32) for v in range(4096)]  # saturates at 2048
    lut.VOILUTSequence = Sequence([item])
    image = display_image(lut)
    expected = np.minimum(chest.astype(np.int64) * 32, 65535) / 65535
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_presentation_lut_inverse_and_padding(chest: np.ndarray) -> None:
    reference = display_image(dataset_from_pixels(chest, window=(2048, 4096)))
    inverse = dataset_from_pixels(4095 - chest, window=(2048, 4096))
    inverse.PresentationLUTShape = "INVERSE"
    np.testing.assert_allclose(display_image(inverse), reference, atol=1e-6)
    padded_pixels = chest.copy()
    padded_pixels[:, :20] = 0
    padded = dataset_from_pixels(padded_pixels)
    padded.PixelPaddingValue = 0
    image = display_image(padded)
    assert (image[:, :20] == 0).all()
    # Padding must not drag the robust window: it matches the window of the image without the border.
    assert abs(float(np.median(image[:, 20:])) - float(np.median(display_image(dataset_from_pixels(chest))[:, 20:]))
               ) < 0.02


def test_rgb_secondary_capture_becomes_grayscale(chest: np.ndarray) -> None:
    ds = dataset_from_pixels(chest)
    eight = (chest >> 4).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.repeat(eight[..., None], 3, axis=2).tobytes()
    image = display_image(ds)
    assert image.shape == chest.shape
    lung, mediastinum = lung_and_mediastinum(image)
    assert lung < mediastinum


def test_wrong_monochrome1_tag_is_survived() -> None:
    path = next((p for p in real_dicom_files() if p.name == "Fake_MONOHR1.dcm"), None)
    if path is None:
        pytest.skip("Fake_MONOHR1.dcm is not in ../shared/data/dicom")
    rendering = render(read_dataset(path))
    assert rendering.inverted and rendering.polarity_corrected
    lung, mediastinum = lung_and_mediastinum(rendering.image)
    assert lung < mediastinum


def test_correct_files_are_never_flipped(chest: np.ndarray) -> None:
    for monochrome1 in (False, True):
        assert not render(dataset_from_pixels(chest, monochrome1=monochrome1)).polarity_corrected
    for path in real_dicom_files():
        if path.name != "Fake_MONOHR1.dcm":
            assert not render(read_dataset(path)).polarity_corrected, path.name


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]), "UNREADABLE_PIXEL_DATA"),
        (lambda ds: setattr(ds, "PixelData", ds.PixelData + b"\0" * 4096), "UNREADABLE_PIXEL_DATA"),
        (lambda ds: setattr(ds, "Rows", 0), "UNREADABLE_PIXEL_DATA"),
        (lambda ds: setattr(ds, "BitsAllocated", 12), "UNREADABLE_PIXEL_DATA"),
        (lambda ds: delattr(ds, "PixelData"), "NO_PIXEL_DATA"),
    ],
    ids=["truncated", "longer-than-header", "zero-rows", "bad-bits-allocated", "no-pixels"],
)
def test_hostile_pixel_data_gives_a_reason(damage, reason: str) -> None:  # type: ignore[no-untyped-def]
    ds = chest_dataset(rows=64, columns=48)
    damage(ds)
    with pytest.raises(PixelDataError) as error:
        display_image(ds)
    assert error.value.reason == reason


def test_truncated_jpeg2000_gives_a_reason(chest: np.ndarray, tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import JPEG2000Lossless

    ds = encode(dataset_from_pixels(chest), JPEG2000Lossless, tmp_path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    with pytest.raises(PixelDataError) as error:
        display_image(ds)
    assert error.value.reason == "UNREADABLE_PIXEL_DATA"


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

"""dicom_io.checks: which instances the model may score (a frontal chest radiograph of a supported class), the
reason code when not, and what is assumed for the tags an image lacks."""

from __future__ import annotations

import pytest

from dicom_io.checks import assess
from dicom_io.synthetic import chest_dataset


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

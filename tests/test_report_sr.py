"""The triage result goes back to the PACS as a Comprehensive 3D SR in the study (and the heat map as a Secondary
Capture): joined to the right patient and study, carrying what the model said about each image, readable by
highdicom and dcmtk, and clean for dciodvfy, also when the real source headers carry invalid values."""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, generate_uid

from dicom_io.report_heatmap import build_heatmap_capture
from dicom_io.report_sr import (
    NOT_ANALYSED,
    PNEUMONIA,
    PNEUMONIA_SCORE,
    PRIVATE_SCHEME,
    TRIAGE_FLAG,
    Algorithm,
    ImageFinding,
    StudyResult,
    build_report,
)
from dicom_io.synthetic import chest_dataset

from conftest import real_dicom_files

ALGORITHM = Algorithm(name="cxr-triage pneumonia triage (ResNet50)", version="cxr-resnet50-mixed-v8",
                      weights_sha256="0123456789abcdef" * 4, software_version="0.1.0")
WHEN = datetime(2024, 5, 6, 7, 8, 9)


def _header(ds: Dataset, folder: Path) -> Dataset:
    """The image as the worker has it: written to the spool, read back without pixel data."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path, stop_before_pixels=True)


def _study(folder: Path) -> tuple[Dataset, Dataset]:
    """One patient's study: a frontal image the model scored and a lateral it did not analyse."""
    study_uid = generate_uid()
    frontal = chest_dataset(patient_index=7, study_uid=study_uid, rows=32, columns=32)
    lateral = chest_dataset(patient_index=7, study_uid=study_uid, view="LL", rows=32, columns=32)
    lateral.InstanceNumber = 2
    return _header(frontal, folder), _header(lateral, folder)


def _result(frontal: Dataset, lateral: Dataset, score: float, threshold: float = 0.5) -> StudyResult:
    return StudyResult(score=score, threshold=threshold, flagged=score >= threshold,
                       images=[ImageFinding(frontal, score), ImageFinding(lateral, None, "LATERAL_VIEW")])


def _build(result: StudyResult, *, series_uid: str | None = None, sop_uid: str | None = None,
           previous_versions: Sequence[Dataset] = ()) -> Dataset:
    return build_report(result, ALGORITHM, series_instance_uid=series_uid or generate_uid(),
                        sop_instance_uid=sop_uid or generate_uid(), instance_number=3,
                        previous_versions=previous_versions, content_datetime=WHEN)


def _saved(ds: Dataset, folder: Path, name: str = "report.dcm") -> Path:
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _texts(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, str]:
    """TEXT concept modifiers of a measurement group (TID 4019: algorithm name, version, parameters) by meaning."""
    return {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.RelationshipType == "HAS CONCEPT MOD"}


def _evaluation(group: hd.sr.MeasurementsAndQualitativeEvaluations, name: hd.sr.CodedConcept) -> hd.sr.CodedConcept:
    (evaluation,) = group.get_qualitative_evaluations(name=name)
    return evaluation.value


def _study_group(report: hd.sr.MeasurementReport) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    (group,) = [g for g in report.get_image_measurement_groups() if g.get_qualitative_evaluations(name=TRIAGE_FLAG)]
    return group


def _image_group(report: hd.sr.MeasurementReport, sop_instance_uid: str
                 ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The per-image group of one image (the study group references the scored images too, so it is left out)."""
    (group,) = [g for g in report.get_image_measurement_groups(referenced_sop_instance_uid=sop_instance_uid)
                if not g.get_qualitative_evaluations(name=TRIAGE_FLAG)]
    return group


def _dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (apt-get install -y dicom3tools)")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_report_joins_the_study_and_carries_each_images_result(tmp_path: Path) -> None:
    frontal, lateral = _study(tmp_path)
    series_uid, sop_uid = generate_uid(), generate_uid()
    built = _build(_result(frontal, lateral, 0.83), series_uid=series_uid, sop_uid=sop_uid)

    sr = hd.sr.srread(_saved(built, tmp_path))

    assert isinstance(sr, hd.sr.Comprehensive3DSR) and sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == frontal.StudyInstanceUID
    assert (sr.PatientID, str(sr.PatientName), sr.AccessionNumber) == (
        frontal.PatientID, str(frontal.PatientName), frontal.AccessionNumber)
    assert sr.SeriesInstanceUID == series_uid != frontal.SeriesInstanceUID and sr.SOPInstanceUID == sop_uid
    assert (sr.SeriesNumber, sr.InstanceNumber, sr.Modality) == (9901, 3, "SR")
    assert "not for diagnosis" in sr.SeriesDescription.lower()
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert {uid for _, _, uid, _ in sr.get_evidence()} == {frontal.SOPInstanceUID, lateral.SOPInstanceUID}
    assert [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence] == [PRIVATE_SCHEME]

    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    (observer,) = report.get_observer_contexts(observer_type=codes.cid270.Device)
    device = observer.observer_identifying_attributes
    assert (device.name, device.model_name) == (ALGORITHM.name, ALGORITHM.version)
    procedure = next(item for item in sr.ContentSequence
                     if item.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported")
    assert procedure.ConceptCodeSequence[0].CodeValue == "399208008"

    study = _study_group(report)
    assert study.finding_type == PNEUMONIA
    assert _evaluation(study, PNEUMONIA) == codes.SCT.Present
    assert _evaluation(study, TRIAGE_FLAG) == codes.SCT.Yes
    assert study.get_measurements(name=PNEUMONIA_SCORE)[0].value == pytest.approx(0.83)
    assert study.get_measurements(name=codes.DCM.ThresholdValue)[0].value == pytest.approx(0.5)
    assert _texts(study) == {"Algorithm Name": ALGORITHM.name, "Algorithm Version": ALGORITHM.version,
                             "Algorithm Manufacturer": "cxr-triage",
                             "Algorithm Parameters": f"weights_sha256={ALGORITHM.weights_sha256}"}

    assert [ref.referenced_sop_instance_uid for ref in study.source_images] == [frontal.SOPInstanceUID]
    scored = _image_group(report, frontal.SOPInstanceUID)
    assert [(ref.referenced_sop_class_uid, ref.referenced_sop_instance_uid) for ref in scored.source_images] == [
        (frontal.SOPClassUID, frontal.SOPInstanceUID)]
    assert scored.get_measurements(name=PNEUMONIA_SCORE)[0].value == pytest.approx(0.83)
    assert not scored.get_qualitative_evaluations(name=NOT_ANALYSED)

    skipped = _image_group(report, lateral.SOPInstanceUID)
    assert [ref.referenced_sop_instance_uid for ref in skipped.source_images] == [lateral.SOPInstanceUID]
    assert not skipped.get_measurements(name=PNEUMONIA_SCORE)
    reason = _evaluation(skipped, NOT_ANALYSED)
    assert (reason.value, reason.scheme_designator) == ("LATERAL_VIEW", PRIVATE_SCHEME)


def test_negative_study_reports_absent_and_not_flagged(tmp_path: Path) -> None:
    frontal, lateral = _study(tmp_path)
    sr = hd.sr.srread(_saved(_build(_result(frontal, lateral, 0.12, threshold=0.4)), tmp_path))

    study = _study_group(sr.content)
    assert _evaluation(study, PNEUMONIA) == codes.SCT.Absent
    assert _evaluation(study, TRIAGE_FLAG) == codes.SCT.No
    assert study.get_measurements(name=PNEUMONIA_SCORE)[0].value == pytest.approx(0.12)
    assert study.get_measurements(name=codes.DCM.ThresholdValue)[0].value == pytest.approx(0.4)


@pytest.mark.parametrize("threshold", [0.5, math.nan])
def test_study_with_no_analysable_image_is_undetermined_without_a_score(tmp_path: Path, threshold: float) -> None:
    _, lateral = _study(tmp_path)
    result = StudyResult(score=None, threshold=threshold, flagged=False,
                         images=[ImageFinding(lateral, None, "LATERAL_VIEW")])
    sr = hd.sr.srread(_saved(_build(result), tmp_path))

    study = _study_group(sr.content)
    assert _evaluation(study, PNEUMONIA) == codes.SCT.Undetermined
    assert _evaluation(study, TRIAGE_FLAG) == codes.SCT.No
    assert not study.get_measurements(name=PNEUMONIA_SCORE)
    thresholds = [m.value for m in study.get_measurements(name=codes.DCM.ThresholdValue)]
    assert thresholds == ([] if math.isnan(threshold) else [pytest.approx(threshold)])


def _object(case: str, folder: Path) -> Dataset:
    """Each kind of object this project sends to the PACS."""
    frontal, lateral = _study(folder)
    if case == "flagged":
        return _build(_result(frontal, lateral, 0.91))
    if case == "not flagged":
        return _build(_result(frontal, lateral, 0.07))
    if case == "nothing analysed":
        return _build(StudyResult(score=None, threshold=0.5, flagged=False,
                                  images=[ImageFinding(lateral, None, "LATERAL_VIEW")]))
    if case == "replaces a previous version":
        return _build(_result(frontal, lateral, 0.6), previous_versions=[_build(_result(frontal, lateral, 0.3))])
    return build_heatmap_capture(frontal, np.full((40, 30, 3), 128, np.uint8), series_instance_uid=generate_uid(),
                                 sop_instance_uid=generate_uid(), instance_number=1)


@pytest.mark.parametrize("case", ["flagged", "not flagged", "nothing analysed", "replaces a previous version",
                                  "heat map"])
def test_dciodvfy_finds_no_errors(tmp_path: Path, case: str) -> None:
    assert _dciodvfy_errors(_saved(_object(case, tmp_path), tmp_path)) == []


@pytest.mark.peers
def test_dsrdump_reads_the_report(tmp_path: Path) -> None:
    if shutil.which("dsrdump") is None:
        pytest.skip("dsrdump (dcmtk) is not installed")
    path = _saved(_object("flagged", tmp_path), tmp_path)
    dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    for text in ("Comprehensive 3D SR", "Pneumonia triage score", "(52101004,SCT,\"Present\")", "LATERAL_VIEW",
                 ALGORITHM.version):
        assert text in dump.stdout, text


def test_reports_built_from_the_real_chest_files_pass_dciodvfy(tmp_path: Path) -> None:
    """Real headers carry values their VR forbids (Patient's Age "62"); the report must not inherit them."""
    files = real_dicom_files()
    assert files, "the real DICOM folder holds no .dcm files"
    for index, path in enumerate(files):
        source = dcmread(path, stop_before_pixels=True, force=True)
        result = StudyResult(score=0.7, threshold=0.5, flagged=True, images=[ImageFinding(source, 0.7)])
        report = _saved(_build(result), tmp_path, f"report-{index}.dcm")
        assert _dciodvfy_errors(report) == [], path.name
        assert dcmread(report).StudyInstanceUID == source.StudyInstanceUID


def test_previous_versions_become_predecessor_documents(tmp_path: Path) -> None:
    frontal, lateral = _study(tmp_path)
    first = hd.sr.srread(_saved(_build(_result(frontal, lateral, 0.3)), tmp_path, "first.dcm"))
    second = _build(_result(frontal, lateral, 0.6), previous_versions=[first])

    (study_item,) = second.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == frontal.StudyInstanceUID
    (series_item,) = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == first.SeriesInstanceUID
    (instance,) = series_item.ReferencedSOPSequence
    assert (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID) == (
        Comprehensive3DSRStorage, first.SOPInstanceUID)
    assert "PredecessorDocumentsSequence" not in first


def test_same_inputs_give_the_same_report(tmp_path: Path) -> None:
    frontal, lateral = _study(tmp_path)
    series_uid, sop_uid = generate_uid(), generate_uid()
    one = _build(_result(frontal, lateral, 0.55), series_uid=series_uid, sop_uid=sop_uid)
    two = _build(_result(frontal, lateral, 0.55), series_uid=series_uid, sop_uid=sop_uid)
    one_bytes = _saved(one, tmp_path, "one.dcm").read_bytes()
    assert one_bytes == _saved(two, tmp_path, "two.dcm").read_bytes()


def test_contradictory_or_mixed_inputs_are_refused(tmp_path: Path) -> None:
    frontal, lateral = _study(tmp_path)
    with pytest.raises(ValueError, match="flagged"):
        StudyResult(score=0.8, threshold=0.5, flagged=False, images=[ImageFinding(frontal, 0.8)])
    with pytest.raises(ValueError, match="reason"):
        ImageFinding(lateral, None)
    with pytest.raises(ValueError, match="threshold"):  # unknown threshold only for a study without a score
        StudyResult(score=0.8, threshold=math.nan, flagged=True, images=[ImageFinding(frontal, 0.8)])
    other_study = _header(chest_dataset(patient_index=8, rows=32, columns=32), tmp_path)
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        _build(StudyResult(score=0.8, threshold=0.5, flagged=True,
                           images=[ImageFinding(frontal, 0.8), ImageFinding(other_study, 0.1)]))
    with pytest.raises(ValueError, match="64 hexadecimal"):
        Algorithm(name="x", version="v", weights_sha256="abc", software_version="0.1.0")


def test_building_logs_and_warns_nothing_about_the_patient(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    """highdicom quotes an unusual person name in a warning; a report must not put it into any log."""
    source = chest_dataset(patient_index=4242, rows=32, columns=32)
    source.PatientName = "SECRETNAME"  # one component: the form highdicom warns about
    source.ReferringPhysicianName = "DOCTORNAME"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own warning about the value set here
        source.PatientAge = "62"  # invalid for AS: left out
    header = _header(source, tmp_path)
    result = StudyResult(score=0.2, threshold=0.5, flagged=False, images=[ImageFinding(header, 0.2)])
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sr = _build(result)
        capture = build_heatmap_capture(header, np.zeros((8, 8, 3), np.uint8), series_instance_uid=generate_uid(),
                                        sop_instance_uid=generate_uid(), instance_number=1)
    said = caplog.text + "".join(str(w.message) for w in caught)
    for secret in ("SECRETNAME", "DOCTORNAME", "SYN4242", "ACC04242"):
        assert secret not in said, secret
    for ds in (sr, capture):
        assert (str(ds.PatientName), str(ds.ReferringPhysicianName)) == ("SECRETNAME", "DOCTORNAME")
        assert "PatientAge" not in ds


def test_heat_map_capture_is_a_labelled_rgb_secondary_capture_in_the_study(tmp_path: Path) -> None:
    frontal, _ = _study(tmp_path)
    rgb = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    series_uid, sop_uid = generate_uid(), generate_uid()
    capture = build_heatmap_capture(frontal, rgb, series_instance_uid=series_uid, sop_instance_uid=sop_uid,
                                    instance_number=2)
    path = _saved(capture, tmp_path, "heatmap.dcm")

    read = dcmread(path)
    assert read.SOPClassUID == SecondaryCaptureImageStorage and read.SOPInstanceUID == sop_uid
    assert (read.StudyInstanceUID, read.PatientID) == (frontal.StudyInstanceUID, frontal.PatientID)
    assert read.SeriesInstanceUID == series_uid and read.InstanceNumber == 2
    assert (read.PhotometricInterpretation, read.BurnedInAnnotation) == ("RGB", "YES")
    for text in (read.SeriesDescription, read.ImageComments, read.DerivationDescription):
        assert "NOT FOR DIAGNOSIS" in text
    assert read.SourceImageSequence[0].ReferencedSOPInstanceUID == frontal.SOPInstanceUID
    np.testing.assert_array_equal(read.pixel_array, rgb)


def test_heat_map_capture_refuses_a_non_rgb_array(tmp_path: Path) -> None:
    frontal, _ = _study(tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        build_heatmap_capture(frontal, np.zeros((8, 8), np.uint8), series_instance_uid=generate_uid(),
                              sop_instance_uid=generate_uid(), instance_number=1)

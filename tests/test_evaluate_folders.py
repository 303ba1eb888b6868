"""`evaluate` sees what the workers see: every positive folder name in ../shared/data counts, an unmapped folder
stops the run with its name, DICOM the worker would refuse is reported with the worker's reason code and left out,
and SOURCE/CLASS/ data is reported per source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dicom_io.synthetic import chest_dataset
from model.checkpoint import CheckpointMetadata, save_checkpoint
from model.evaluate import evaluate
from model.folders import UnmappedFolderError
from model.network import build_network
from model.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px checkpoint: scores are meaningless, what is counted and refused is the point."""
    import torch

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("model") / "small.safetensors"
    save_checkpoint(build_network(), CheckpointMetadata(version="folders-test", trained=False, input_size=32,
                                                        preprocessing=PreprocessSpec(size=32).to_dict()), path)
    return path


def _pngs(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = (rng.random((40, 36)) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"IM-{seed:02d}{index:02d}-0001.png")


def test_covid_and_other_pneumonia_folders_count_as_positive(tmp_path: Path, small_model: Path) -> None:
    _pngs(tmp_path / "data" / "NORMAL", 3, 1)
    _pngs(tmp_path / "data" / "PNEUMONIA", 2, 2)
    _pngs(tmp_path / "data" / "COVID", 2, 3)
    _pngs(tmp_path / "data" / "OTHER_PNEUMONIA", 1, 4)
    _pngs(tmp_path / "data" / "UNLABELED", 2, 5)  # ignored on purpose by default
    report = evaluate(tmp_path / "data", small_model, tmp_path / "out", n_boot=10)
    assert report["n"] == 8 and report["tp"] + report["fn"] == 5
    assert report["per_folder"]["COVID"]["n"] == 2 and report["per_folder"]["COVID"]["label"] == 1
    assert "UNLABELED" in report["ignored_folders"]


def test_an_unmapped_folder_stops_the_run_naming_it(tmp_path: Path, small_model: Path) -> None:
    _pngs(tmp_path / "data" / "NORMAL", 2, 1)
    _pngs(tmp_path / "data" / "PNEUMONIA", 2, 2)
    _pngs(tmp_path / "data" / "TUBERCULOSIS", 2, 3)
    with pytest.raises(UnmappedFolderError, match="TUBERCULOSIS"):
        evaluate(tmp_path / "data", small_model, tmp_path / "out", n_boot=10)
    from triage.main import app

    result = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path / "data"), "--model", str(small_model),
                                      "--out", str(tmp_path / "cli"), "--bootstrap", "10"])
    assert result.exit_code == 2 and "TUBERCULOSIS" in result.output, result.output
    mapped = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path / "data"), "--model", str(small_model),
                                      "--out", str(tmp_path / "cli"), "--bootstrap", "10",
                                      "--ignore-folder", "TUBERCULOSIS"])
    assert mapped.exit_code == 0, mapped.output
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["n"] == 4


def test_a_lateral_dicom_is_reported_not_analysable_as_the_worker_would(tmp_path: Path, small_model: Path) -> None:
    normal, positive = tmp_path / "data" / "NORMAL", tmp_path / "data" / "PNEUMONIA"
    normal.mkdir(parents=True)
    positive.mkdir(parents=True)
    chest_dataset(view="LL", rows=64, columns=56, seed=1).save_as(normal / "lateral.dcm", enforce_file_format=True)
    chest_dataset(view="PA", rows=64, columns=56, seed=2).save_as(normal / "frontal.dcm", enforce_file_format=True)
    chest_dataset(view="PA", rows=64, columns=56, seed=3, opacity=True).save_as(positive / "frontal.dcm",
                                                                              enforce_file_format=True)
    report = evaluate(tmp_path / "data", small_model, tmp_path / "out", n_boot=10)
    assert report["n"] == 2
    assert [(Path(item["path"]).name, item["reason"]) for item in report["not_analysable"]] == \
        [("lateral.dcm", "LATERAL_VIEW")]
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert any("lateral.dcm" in row and "LATERAL_VIEW" in row for row in rows)


def test_by_folder_reports_each_source(tmp_path: Path, small_model: Path) -> None:
    _pngs(tmp_path / "data" / "hospital-a" / "NORMAL", 3, 1)
    _pngs(tmp_path / "data" / "hospital-a" / "COVID", 2, 2)
    _pngs(tmp_path / "data" / "hospital-b" / "NORMAL", 2, 3)
    _pngs(tmp_path / "data" / "hospital-b" / "PNEUMONIA", 3, 4)
    with pytest.raises(UnmappedFolderError, match="hospital-a"):  # without --by-folder the sources are unmapped
        evaluate(tmp_path / "data", small_model, tmp_path / "out", n_boot=10)
    report = evaluate(tmp_path / "data", small_model, tmp_path / "out", n_boot=10, by_folder=True)
    assert report["n"] == 10
    assert {name: (entry["n"], entry["positive"]) for name, entry in report["per_source"].items()} == \
        {"hospital-a": (5, 2), "hospital-b": (5, 3)}
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert sum(",hospital-b," in row for row in rows) == 5

"""`cxr-triage inspect`: decision, reason and encoding per file, and the pictures the model is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from dicom_io.synthetic import chest_dataset

from conftest import real_dicom_files


def run_inspect(*args: str, cwd: Path, model_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(TRIAGE_DATA_DIR=str(cwd / "var"), TRIAGE_MODEL=str(model_path))
    return subprocess.run([sys.executable, "-m", "triage", "inspect", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_inspect_json_and_pngs(tmp_path: Path, model_path: Path) -> None:
    lateral = tmp_path / "lateral.dcm"
    chest_dataset(view="LL").save_as(lateral, enforce_file_format=True)
    broken_ds = chest_dataset(rows=64, columns=48)
    broken_ds.PixelData = broken_ds.PixelData[:10]
    broken = tmp_path / "broken.dcm"
    broken_ds.save_as(broken, enforce_file_format=True)
    files = [str(p) for p in real_dicom_files()] + [str(lateral), str(broken)]
    result = run_inspect("--json", "--png", str(tmp_path / "png"), *files, cwd=tmp_path, model_path=model_path)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(reports) == set(files)
    for report in reports.values():
        for key in ("path", "analysable", "reason", "transfer_syntax", "photometric", "window", "rows", "columns"):
            assert key in report
    assert reports[str(lateral)]["analysable"] is False and reports[str(lateral)]["reason"] == "LATERAL_VIEW"
    assert reports[str(broken)]["reason"] == "UNREADABLE_PIXEL_DATA"
    for path in real_dicom_files():
        report = reports[str(path)]
        assert report["analysable"] is True and report["reason"] is None, report
        display = Image.open(tmp_path / "png" / f"{path.stem}.display.png")
        model_input = Image.open(tmp_path / "png" / f"{path.stem}.input.png")
        assert display.size == (report["columns"], report["rows"])
        assert model_input.size == (224, 224)  # the untrained test model is 224 px
    fake = reports[next(str(p) for p in real_dicom_files() if p.name == "Fake_MONOHR1.dcm")]
    assert any("polarity corrected" in note for note in fake["notes"])
    assert not (tmp_path / "png" / "lateral.input.png").exists()
    # No patient data: the synthetic files carry SYNTHETIC^PATIENT… names.
    assert "SYNTHETIC" not in result.stdout + result.stderr


def test_inspect_table_output(tmp_path: Path, model_path: Path) -> None:
    path = tmp_path / "pa.dcm"
    chest_dataset().save_as(path, enforce_file_format=True)
    result = run_inspect(str(path), cwd=tmp_path, model_path=model_path)
    assert result.returncode == 0, result.stderr
    assert "analysable" in result.stdout and "MONOCHROME2" in result.stdout and "C2048/W4096" in result.stdout

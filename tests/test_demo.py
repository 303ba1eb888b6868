"""`cxr-triage demo --once`: the whole system on embedded defaults, as `make demo` runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from model.checkpoint import SHIPPED_CHECKPOINT, read_metadata

from peers import free_port


def test_demo_once_with_generated_images(tmp_path: Path) -> None:
    empty = tmp_path / "no-dicom-here"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(TRIAGE_DATA_DIR=str(tmp_path / "var"), TRIAGE_DICOM_PORT=str(free_port()),
               TRIAGE_WEB_PORT=str(free_port()), COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "triage", "demo", "--once", "--source", str(empty)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "generated chest-like images" in result.stdout
    assert "all 4 instance(s) classified" in result.stdout
    if SHIPPED_CHECKPOINT.is_file():  # the default model is the shipped trained one: no banner, its version shown
        assert "UNTRAINED MODEL" not in result.stdout
        assert read_metadata(SHIPPED_CHECKPOINT).version in result.stdout
    else:
        assert "UNTRAINED MODEL" in result.stdout
    assert len(set(re.findall(r"SYN000\d", result.stdout))) == 4  # the worklist table lists every study (by ID)
    # Nothing but the worklist table may show patient names: logs (stderr) carry UIDs only.
    assert "SYNTHETIC^PATIENT" not in result.stderr and "SYNTHETIC, PATIENT" not in result.stderr

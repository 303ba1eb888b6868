"""CPU precision: chosen from the CPU's own flags (bf16 only with native support), and bf16 scores agree with fp32
on real chest films within the tolerance measured on the validation set (model/MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Largest |bf16 - fp32| score difference measured on the shipped model's validation images (bench/precision.py),
# rounded up; the model card gives the measurement.
BF16_SCORE_TOLERANCE = 0.05


def test_cpu_precision_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from model import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert precision.autocast_dtype(cpu) is None
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.autocast_dtype(cpu) is torch.bfloat16
    assert precision.autocast_dtype(cpu, allow_bf16=False) is None
    assert precision.autocast_dtype(torch.device("cuda")) is torch.float16


def test_bf16_scores_agree_with_fp32_on_real_films() -> None:
    from model.checkpoint import SHIPPED_CHECKPOINT
    from model.inference import Classifier
    from model.preparation import file_display
    from model.preprocess import to_model_input

    folder = SHARED_DATA / "kermany-val-fullres"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: real chest films are needed for this test")
    paths = sorted((folder / "NORMAL").iterdir())[:3] + sorted((folder / "PNEUMONIA").iterdir())[:3]
    fp32 = Classifier(SHIPPED_CHECKPOINT, "cpu", allow_bf16=False)
    assert fp32.precision is None
    batch = torch.stack([to_model_input(file_display(p), fp32.preprocess) for p in paths])
    reference = fp32.score(batch)
    fp32.precision = torch.bfloat16  # emulated where the CPU lacks bf16: slower, same arithmetic
    reduced = fp32.score(batch)
    assert np.std(reference) > 0.1, reference  # the films are told apart, so agreement means something
    assert np.max(np.abs(reduced - reference)) < BF16_SCORE_TOLERANCE, np.round(reduced - reference, 4)

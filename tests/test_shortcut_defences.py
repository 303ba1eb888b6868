"""What keeps the classifier from learning the hospital instead of the lungs: histogram equalisation in the model's
own preprocessing, sites read from the data manifests, a split per site, sampling balanced by site and class, and
augmentation of sharpness and edges. Also the CPU precision choice that training and serving share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import AugmentSpec, Sample, augment_batch, discover, patient_split, sampling_weights
from model.preprocess import PreprocessSpec, equalize_histogram, to_model_input

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_equalisation_removes_exposure_and_window_differences() -> None:
    rng = np.random.default_rng(0)
    image = rng.beta(2, 5, (1, 1, 96, 96)).astype(np.float32)
    darker_narrower = 0.45 + 0.4 * image  # another site's exposure and window: a monotonic map of the same film
    plain = torch.from_numpy(image)
    other = torch.from_numpy(darker_narrower)
    assert float((plain - other).abs().mean()) > 0.1  # without equalisation the two differ
    equalised, equalised_other = equalize_histogram(plain), equalize_histogram(other)
    assert float((equalised - equalised_other).abs().max()) < 0.02
    assert float(equalised.mean()) == pytest.approx(0.5, abs=0.01)  # a flat histogram, whatever went in


def test_equalisation_is_part_of_the_checkpoint_spec_and_old_specs_stay_off() -> None:
    spec = PreprocessSpec(size=64, equalize=True)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    legacy = {key: value for key, value in spec.to_dict().items() if key != "equalize"}
    assert PreprocessSpec.from_dict(legacy).equalize is False
    display = np.linspace(0.3, 0.6, 80 * 70, dtype=np.float32).reshape(80, 70)
    on, off = to_model_input(display, spec), to_model_input(display, PreprocessSpec(size=64))
    assert not torch.allclose(on, off)  # serving follows the checkpoint's spec


def _sample(site: str, label: int, index: int, population: str = "adult") -> Sample:
    return Sample(Path(f"/d/{site}/{label}/{index}.png"), label, f"{site}:p{index}", "F", site, population)


def test_sampling_balances_classes_within_a_site_and_weighs_sites_by_square_root() -> None:
    samples = ([_sample("nih", 0, i) for i in range(900)] + [_sample("nih", 1, i) for i in range(100)]
               + [_sample("bimcv", 1, i) for i in range(400)] + [_sample("tiny", 0, i) for i in range(10)]
               + [_sample("tiny", 1, i) for i in range(30)])
    weights = sampling_weights(samples)
    assert weights.sum() == pytest.approx(1.0)

    def mass(site: str, label: int | None = None) -> float:
        return float(sum(w for s, w in zip(samples, weights, strict=True)
                         if s.site == site and label in (None, s.label)))

    assert mass("nih", 0) == pytest.approx(mass("nih", 1))  # NIH-looking predicts nothing about the label
    assert mass("nih") / mass("bimcv") == pytest.approx(np.sqrt(1000 / 400))
    assert mass("tiny", 1) == pytest.approx(3 * mass("tiny", 0))  # too few of a class to balance: as it is


def test_a_population_share_moves_children_against_adults_and_keeps_each_sites_balance() -> None:
    samples = ([_sample("kermany", i % 3 == 0, i, "pediatric") for i in range(600)]
               + [_sample("nih", 0, i) for i in range(900)] + [_sample("nih", 1, i) for i in range(100)]
               + [_sample("bimcv", 1, i) for i in range(400)])
    plain, shifted = sampling_weights(samples), sampling_weights(samples, population_share={"pediatric": 0.6})

    def mass(weights: np.ndarray, site: str, label: int | None = None) -> float:
        return float(sum(w for s, w in zip(samples, weights, strict=True)
                         if s.site == site and label in (None, s.label)))

    assert mass(plain, "kermany") == pytest.approx(np.sqrt(600) / (np.sqrt(600) + np.sqrt(1000) + np.sqrt(400)))
    assert mass(shifted, "kermany") == pytest.approx(0.6) and shifted.sum() == pytest.approx(1.0)
    assert mass(shifted, "nih", 0) == pytest.approx(mass(shifted, "nih", 1))  # the site's classes stay balanced
    assert mass(shifted, "nih") / mass(shifted, "bimcv") == pytest.approx(mass(plain, "nih") / mass(plain, "bimcv"))
    assert mass(shifted, "kermany", 1) / mass(shifted, "kermany") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="less than 1"):
        sampling_weights(samples, population_share={"pediatric": 1.0})


def test_split_is_per_site_so_adding_a_site_keeps_the_others_validation() -> None:
    kids = [_sample("kermany", i % 3 == 0, i, "pediatric") for i in range(300)]
    adults = [_sample("nih", i % 5 == 0, i) for i in range(200)]
    _, val_alone = patient_split(kids, 0.15, seed=0)
    train, val = patient_split(kids + adults, 0.15, seed=0)
    assert [s for s in val if s.site == "kermany"] == val_alone
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert {(s.site, s.label) for s in val} == {("kermany", 0), ("kermany", 1), ("nih", 0), ("nih", 1)}


def test_sites_and_patients_come_from_the_manifests_of_the_real_data() -> None:
    adult, nih = SHARED_DATA / "adult-cxr", SHARED_DATA / "nih-adult"
    if not (adult / "MANIFEST.csv").is_file() or not (nih / "MANIFEST.csv").is_file():
        pytest.skip(f"{adult} or {nih} is absent: the adult data sets are needed for this test")
    samples = discover(adult) + discover(nih)
    sites = {(s.site, s.folder) for s in samples}
    assert ("nih", "NORMAL") in sites and ("nih", "PNEUMONIA") in sites and ("bimcv", "COVID") in sites
    assert ("adult-cxr:hannover", "COVID") in sites
    assert {s.population for s in samples} == {"adult"}
    nih_pneumonia = [s for s in samples if s.site == "nih" and s.label == 1]
    assert len(nih_pneumonia) >= 200 and all(s.patient.startswith("nih-adult:") for s in nih_pneumonia)


def test_edge_and_sharpness_augmentation_changes_edges_and_detail() -> None:
    images = torch.rand(16, 1, 64, 64)
    edges_only = AugmentSpec(rotation_deg=0, scale=(1, 1), translate=0, brightness=0, contrast=(1, 1),
                             gamma=(1, 1), blur_probability=0, border_probability=1.0, border_max=0.2)
    bordered = augment_batch(images.clone(), edges_only, torch.Generator().manual_seed(1))
    assert float((bordered[:, :, 0, :] == 0).float().mean()) > 0.5  # most top rows blanked
    torch.testing.assert_close(bordered[:, :, 20:44, 20:44], images[:, :, 20:44, 20:44])  # the middle is kept
    blur_only = AugmentSpec(rotation_deg=0, scale=(1, 1), translate=0, brightness=0, contrast=(1, 1),
                            gamma=(1, 1), blur_probability=1.0, blur_scale=(0.4, 0.5), border_probability=0)
    softened = augment_batch(images.clone(), blur_only, torch.Generator().manual_seed(1))
    detail = lambda x: float((x[..., 1:] - x[..., :-1]).abs().mean())  # noqa: E731
    assert detail(softened) < 0.5 * detail(images)


def test_same_class_site_auc_exposes_a_model_that_reads_the_hospital() -> None:
    from model.train import same_class_site_auc

    samples = ([_sample("nih", 0, i) for i in range(20)] + [_sample("kermany", 0, i, "pediatric") for i in range(20)]
               + [_sample("bimcv", 1, i) for i in range(20)] + [_sample("tiny", 1, i) for i in range(5)])
    rng = np.random.default_rng(0)
    lungs = rng.random(len(samples))  # scores unrelated to the site
    hospital = np.array([0.9 if s.site == "kermany" else 0.1 for s in samples]) + 0.01 * rng.random(len(samples))
    fair, unfair = same_class_site_auc(lungs, samples), same_class_site_auc(hospital, samples)
    assert set(fair) == {"negative: kermany vs nih"}  # one class with two sites of >= 10 images
    assert abs(fair["negative: kermany vs nih"] - 0.5) < 0.25
    assert unfair["negative: kermany vs nih"] == 1.0

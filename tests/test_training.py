"""Training tool chain: patients from file names, deduplication, patient-disjoint split, the batched preprocessing
twin of ``to_model_input``, augmentation, a tiny separable training run end to end (train → checkpoint → evaluate →
CLI), and the real data set's split when ../shared/data is present."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import (
    AugmentSpec,
    Sample,
    augment_batch,
    batch_to_model_input,
    build_cache,
    deduplicate,
    discover,
    displays_from_cache,
    load_display,
    patient_from_name,
    patient_split,
)
from model.preprocess import PreprocessSpec, to_model_input

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KERMANY = SHARED_DATA / "kermany-train-224"


def _kermany() -> Path:
    if not KERMANY.is_dir():
        pytest.skip(f"{KERMANY} is absent: the real Kermany training images are needed for this test")
    return KERMANY


# --- data -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "patient"), [
    ("person1000_bacteria_2931.jpeg", "person1000"),
    ("person1000_virus_1681.jpeg", "person1000"),
    ("IM-0115-0001.jpeg", "im-115"),
    ("NORMAL2-IM-0115-0002.jpeg", "im-115"),
    ("NORMAL2-IM-1427-0001.jpeg", "im-1427"),
    ("00870a9c.jpg", "file:COVID/00870a9c"),
])
def test_patient_from_file_name(name: str, patient: str) -> None:
    assert patient_from_name(name, "COVID") == patient


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array * 255, 0, 255).astype(np.uint8), mode="L").save(path)
    return path


def test_deduplicate_drops_copies_and_conflicts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b, c = (rng.random((16, 16)) for _ in range(3))
    _png(tmp_path / "NORMAL" / "IM-0001-0001.png", a)
    shutil.copy(tmp_path / "NORMAL" / "IM-0001-0001.png", tmp_path / "NORMAL" / "IM-0002-0001.png")  # same bytes
    _png(tmp_path / "NORMAL" / "IM-0003-0001.png", b)
    _png(tmp_path / "NORMAL" / "IM-0004-0001.png", c)
    (tmp_path / "PNEUMONIA").mkdir()
    shutil.copy(tmp_path / "NORMAL" / "IM-0004-0001.png", tmp_path / "PNEUMONIA" / "person9_virus_1.png")
    samples = discover(tmp_path)
    assert len(samples) == 5
    kept, stats = deduplicate(samples)
    names = sorted(s.path.name for s in kept)
    assert names == ["IM-0001-0001.png", "IM-0003-0001.png"]
    assert stats == {"files": 5, "duplicate_groups": 2, "duplicates_removed": 3, "conflicting_groups_dropped": 1}


def test_patient_split_is_disjoint_and_stratified() -> None:
    samples = [Sample(Path(f"/x/{p}_{i}.png"), label=int(p.startswith("person")), patient=p, folder="F")
               for p in [f"person{k}" for k in range(60)] + [f"im-{k}" for k in range(40)]
               for i in range(1 + len(p) % 3)]
    train, val = patient_split(samples, 0.2, seed=1)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert len(train) + len(val) == len(samples)
    assert 0.15 < len(val) / len(samples) < 0.3
    assert {s.label for s in val} == {0, 1}
    assert patient_split(samples, 0.2, seed=1) == (train, val)
    assert patient_split(samples, 0.2, seed=2) != (train, val)


def test_real_data_split_has_no_shared_patient_or_image() -> None:
    samples, stats = deduplicate(discover(_kermany()))
    assert stats["duplicates_removed"] >= 20  # the data set's known byte-identical copies
    train, val = patient_split(samples, 0.15, seed=0)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert 0.12 < len(val) / len(samples) < 0.18
    assert {s.label for s in val} == {0, 1}


# --- preprocessing twin ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("equalize", [False, True])
@pytest.mark.parametrize(("shape", "size"), [((224, 224), 224), ((224, 224), 96), ((300, 250), 128), ((64, 80), 96)])
def test_batched_preprocessing_equals_the_serving_function(shape: tuple[int, int], size: int, equalize: bool) -> None:
    rng = np.random.default_rng(size)
    displays = [rng.random(shape, dtype=np.float32) for _ in range(3)]
    spec = PreprocessSpec(size=size, equalize=equalize)
    batched = batch_to_model_input(torch.from_numpy(np.stack(displays)), spec)
    single = torch.stack([to_model_input(d, spec) for d in displays])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)


def test_cached_real_images_feed_the_network_exactly_as_serving_does() -> None:
    paths = sorted((_kermany() / "NORMAL").iterdir())[:2] + sorted((_kermany() / "PNEUMONIA").iterdir())[:2]
    samples = [Sample(p, 0, "p", "F") for p in paths]
    cache = build_cache(samples, 224)
    for size in (224, 128):
        spec = PreprocessSpec(size=size)
        batched = batch_to_model_input(displays_from_cache(cache, range(len(paths))), spec)
        served = torch.stack([to_model_input(load_display(p), spec) for p in paths])
        torch.testing.assert_close(batched, served, rtol=0, atol=1e-5)


def test_shipped_model_scores_full_resolution_originals_like_the_224_copies_it_learned_from() -> None:
    """Training saw the mirror's 224 px RGB JPEG copies; serving sees originals of any size. The stretch to the
    model input must make the two agree, or every site's score would drift from the validated operating point."""
    import io

    from model.checkpoint import SHIPPED_CHECKPOINT
    from model.inference import Classifier

    folder = SHARED_DATA / "kermany-val-fullres"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the full-resolution Kermany images are needed for this test")
    classifier = Classifier(SHIPPED_CHECKPOINT, "cpu")
    originals, copies = [], []
    for path in sorted(folder.rglob("*.jpeg")):
        with Image.open(path) as image:
            assert min(image.size) > 2 * 224, "the originals must be larger than the copies"
            buffer = io.BytesIO()
            image.convert("RGB").resize((224, 224), Image.BILINEAR).save(buffer, "JPEG", quality=75)
        originals.append(to_model_input(load_display(path), classifier.preprocess))
        buffer.seek(0)
        copy = np.asarray(Image.open(buffer).convert("L"), dtype=np.float32) / np.float32(255.0)
        copies.append(to_model_input(copy, classifier.preprocess))
    full, small = classifier.score(torch.stack(originals)), classifier.score(torch.stack(copies))
    assert len(full) == 16 and np.std(full) > 0.2, full  # the images are told apart, so agreement means something
    # No drift (what would move a site off the operating point) and no flag changed; one image may differ more, as
    # any re-encoded copy does (measured: mean 0.018, largest 0.090 for mixed-v9; 0.017 / 0.045 for mixed-v8).
    difference = np.round(full - small, 3)
    assert np.mean(np.abs(full - small)) < 0.03 and abs(np.mean(full - small)) < 0.02, difference
    assert np.max(np.abs(full - small)) < 0.12, difference
    threshold = classifier.metadata.threshold
    assert np.array_equal(full >= threshold, small >= threshold), difference


def test_augmentation_is_bounded_seeded_and_identity_at_zero_strength() -> None:
    images = torch.rand(4, 1, 48, 48)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = augment_batch(images, AugmentSpec(), g1)
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(out, augment_batch(images, AugmentSpec(), g2))
    assert float((out - images).abs().mean()) > 0.01
    still = AugmentSpec(rotation_deg=0, scale=(1, 1), translate=0, brightness=0, contrast=(1, 1), gamma=(1, 1),
                        blur_probability=0, border_probability=0)
    torch.testing.assert_close(augment_batch(images, still, torch.Generator()), images, atol=1e-5, rtol=0)


# --- a tiny separable data set, end to end ---------------------------------------------------------------------

def _chest(rng: np.random.Generator, opacity: bool, size: int = 64) -> np.ndarray:
    """A crude radiograph: bright body, two dark lungs, noise; positives get a bright blob inside a lung."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.75 - 0.45 * (((x - 0.3) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1)
    image -= 0.45 * (((x - 0.7) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1)
    if opacity:  # a large consolidation filling much of one lung
        cx, cy = rng.choice([0.3, 0.7]) + rng.uniform(-0.03, 0.03), rng.uniform(0.45, 0.6)
        image += 0.45 * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.12 ** 2)))
    image += rng.normal(0, 0.03, image.shape)
    return np.clip(image, 0, 1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from model.train import TrainConfig, parse_stages, train

    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    rng = np.random.default_rng(0)
    for k in range(56):
        _png(data / "NORMAL" / f"IM-{k:04d}-0001.png", _chest(rng, False))
        _png(data / "PNEUMONIA" / f"person{k}_bacteria_{k}.png", _chest(rng, True))
        if k % 4 == 0:  # a second image of some patients: the split must keep them together
            _png(data / "PNEUMONIA" / f"person{k}_virus_{k + 100}.png", _chest(rng, True))
    torch.manual_seed(0)
    # These 32 px films are bright to their very edge, so blanked borders change them far more than a real film
    # (whose edges are dark already); the loop is what is tested here, the augmentations in test_shortcut_defences.
    config = TrainConfig(data=[data], out=root / "run", stages=parse_stages("32:6"), batch_size=8, lr=0.01,
                         warmup_epochs=0.5, val_fraction=0.25, patience=6, min_auc=0.9, bootstrap=100,
                         version="tiny-test", output=root / "tiny.safetensors", threads=1,
                         augmentation=AugmentSpec(border_probability=0))
    summary = train(config)
    return {"root": root, "data": data, "config": config, "summary": summary}


def test_tiny_separable_set_trains_to_high_validation_auc(tiny_run: dict) -> None:
    summary = tiny_run["summary"]
    history = summary["history"]
    assert [h["size"] for h in history] == [32] * 6
    aucs = [h["val_auc"] for h in history]
    assert max(aucs) >= 0.9 and aucs[0] < max(aucs), aucs  # learned: labels, loop and preprocessing agree
    assert summary["validation_metrics"]["auc"] == pytest.approx(max(aucs))  # the best epoch is the one kept
    assert summary["checkpoint"], "a model that learned must be written"
    run = tiny_run["config"].out
    lines = (run / "epochs.jsonl").read_text().splitlines()
    assert len(lines) == len(history) and json.loads(lines[0])["epoch"] == 1
    assert "val AUC" in (run / "train.log").read_text()


def test_only_epochs_at_the_final_size_compete_for_the_checkpoint(tiny_run: dict, tmp_path: Path) -> None:
    from dataclasses import replace

    from model.train import parse_stages, train

    config = replace(tiny_run["config"], out=tmp_path / "run", output=tmp_path / "m.safetensors",
                     stages=parse_stages("32:2,40:1"), min_auc=0.0, bootstrap=10)
    summary = train(config)
    assert [h["size"] for h in summary["history"]] == [32, 32, 40]
    assert summary["best"]["epoch"] == 3 and summary["best"]["size"] == 40  # even if a 32 px epoch scored higher
    assert read_input_size(config.output) == 40


def read_input_size(path: Path) -> int:
    from model.checkpoint import read_metadata

    return read_metadata(path).input_size


def test_selection_score_weighs_adults_and_children_alike() -> None:
    from model.train import selection_score

    both = {"populations": {"adult": {"auc": 0.80}, "pediatric": {"auc": 0.96}}}
    assert selection_score(both, fallback=0.5) == pytest.approx(0.88)
    one = {"populations": {"adult": {"auc": 0.80}, "pediatric": {"auc": None}}}
    assert selection_score(one, fallback=0.77) == pytest.approx(0.77)


def test_tiny_checkpoint_carries_threshold_metrics_and_its_input_size(tiny_run: dict) -> None:
    from model.checkpoint import read_metadata

    metadata = read_metadata(tiny_run["config"].output)
    metrics = metadata.validation_metrics
    assert metadata.trained and metadata.version == "tiny-test"
    assert metadata.input_size == 32 and metadata.preprocess_spec.size == 32
    assert metrics["sensitivity"] >= 0.95 and metadata.threshold == pytest.approx(metrics["threshold"])
    assert metrics["auc_ci95"][0] <= metrics["auc"] <= metrics["auc_ci95"][1]
    assert metadata.training_data["recipe"]["horizontal_flip"] is False
    assert metadata.training_data["val_patients"] > 0


def test_training_resumes_from_its_run_folder(tiny_run: dict) -> None:
    from model.train import train

    summary = train(tiny_run["config"])  # every epoch already done: resumes, trains nothing, same result
    assert "resumed after epoch" in (tiny_run["config"].out / "train.log").read_text()
    assert summary["history"] == tiny_run["summary"]["history"]


def test_evaluate_scores_files_through_the_serving_path(tiny_run: dict, tmp_path: Path) -> None:
    from model.evaluate import evaluate

    report = evaluate(tiny_run["data"], tiny_run["config"].output, tmp_path / "eval", n_boot=50)
    for key in ("n", "tp", "tn", "fp", "fn", "accuracy", "sensitivity", "specificity", "precision", "f1", "auc",
                "threshold", "model_sha256"):
        assert key in report, key
    assert report["n"] == report["tp"] + report["tn"] + report["fp"] + report["fn"] == 126
    assert report["auc"] >= 0.9  # (train + val images of a separable set)
    for name in ("report.json", "report.txt", "scores.csv", "confusion_matrix.png", "roc_curve.png",
                 "score_histograms.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["auc_ci95"][0] <= report["auc"]


def test_cli_model_info_and_evaluate(tiny_run: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from triage.main import app

    runner = CliRunner()
    info = runner.invoke(app, ["model", "info", str(tiny_run["config"].output), "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    assert data["version"] == "tiny-test" and len(data["sha256"]) == 64 and data["input_size"] == 32
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    refused = runner.invoke(app, ["model", "info", str(bad)])
    assert refused.exit_code == 2 and "not a safetensors file" in refused.output
    result = runner.invoke(app, ["evaluate", "--data", str(tiny_run["data"]), "--model", str(tiny_run["config"].output),
                                 "--out", str(tmp_path / "cli"), "--bootstrap", "20", "--threshold", "0.5"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["threshold"] == 0.5 and report["threshold_source"] == "override"


def test_cli_train_shows_progress_and_writes_the_checkpoint(tiny_run: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from model.checkpoint import read_metadata
    from triage.main import app

    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--data", str(tiny_run["data"]), "--out", str(run), "--stages", "32:1", "--batch-size", "8",
        "--lr", "0.01", "--val-fraction", "0.25", "--min-auc", "0", "--bootstrap", "20", "--threads", "1",
        "--version", "cli-test", "--balance", "sites", "--equalize", "--epoch-images", "96"])
    assert result.exit_code == 0, result.output
    assert "epoch 1/1 32px" in result.output and "validation AUC" in result.output
    assert "px batch " not in result.output  # per-batch lines go to train.log only while a bar is shown
    assert "32px batch " in (run / "train.log").read_text()
    metadata = read_metadata(run / "model.safetensors")
    assert metadata.version == "cli-test" and metadata.input_size == 32
    assert metadata.preprocess_spec.equalize is True  # serving will equalise as training did
    assert metadata.training_data["recipe"]["sampling"] == "sites"
    assert metadata.training_data["recipe"]["images_per_epoch"] == 96
    assert metadata.validated_population["populations"] == ["adult"]
    assert "32px batch 12/12" in (run / "train.log").read_text()  # 96 images drawn in batches of 8


def test_soft_cross_entropy_is_least_where_the_student_agrees_with_the_teacher() -> None:
    from model.train import soft_cross_entropy

    teacher = torch.tensor([0.2])
    student_logit = torch.linspace(-4, 4, 801)  # positive-class logit, the normal logit at 0
    losses = torch.stack([soft_cross_entropy(torch.tensor([[0.0, z]]), teacher) for z in student_logit])
    best = float(torch.sigmoid(student_logit[int(losses.argmin())]))
    assert best == pytest.approx(0.2, abs=0.005)


def test_a_teacher_reads_images_as_the_worker_reads_them_and_is_recorded(tiny_run: dict, tmp_path: Path) -> None:
    from dataclasses import replace

    from model.checkpoint import read_metadata
    from model.inference import Classifier
    from model.train import Teacher, parse_stages, train

    teacher_path = tiny_run["config"].output
    teacher = Teacher.load(teacher_path, torch.device("cpu"))
    displays = torch.from_numpy(np.stack([_chest(np.random.default_rng(k), k % 2 == 1, 48) for k in range(4)])
                                .astype(np.float32))
    served = Classifier(teacher_path, device="cpu", allow_bf16=False).score(
        torch.stack([to_model_input(d.numpy(), teacher.spec) for d in displays]))
    assert teacher.scores(displays, None).numpy() == pytest.approx(served, abs=1e-5)
    assert not any(p.requires_grad for p in teacher.network.parameters())  # only the student learns

    # The tiny data is not pediatric, so the teacher is asked to teach the adults here.
    config = replace(tiny_run["config"], out=tmp_path / "run", output=tmp_path / "m.safetensors",
                     stages=parse_stages("32:1"), min_auc=0.0, bootstrap=10, teacher=teacher_path,
                     distill_population="adult", distill_weight=2.0)
    train(config)
    assert "teacher tiny-test (32px)" in (config.out / "train.log").read_text()
    recipe = read_metadata(config.output).training_data["recipe"]
    assert recipe["teacher"]["version"] == "tiny-test" and recipe["teacher"]["weight"] == 2.0
    assert len(recipe["teacher"]["sha256"]) == 64


def test_a_weight_average_is_what_is_validated_written_and_resumed(tiny_run: dict, tmp_path: Path) -> None:
    from dataclasses import replace

    from model.checkpoint import load_checkpoint, read_metadata
    from model.train import parse_stages, train

    config = replace(tiny_run["config"], out=tmp_path / "run", output=tmp_path / "m.safetensors",
                     stages=parse_stages("32:1"), min_auc=0.0, bootstrap=10, ema_decay=0.9)
    summary = train(config)
    assert [h["weights"] for h in summary["history"]] == ["ema"]
    assert summary["history"][0]["val_auc_raw_by_population"]  # the raw weights are scored too
    state = torch.load(config.out / "last.pt", map_location="cpu", weights_only=False)
    average = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    written, raw = load_checkpoint(config.output).network.state_dict(), state["network"]
    torch.testing.assert_close(written["fc.weight"].float(), average["fc.weight"].float(), atol=2e-3, rtol=0)
    assert not torch.allclose(raw["fc.weight"].float(), average["fc.weight"].float(), atol=2e-3)  # not the last step
    assert "EMA, decay 0.9" in read_metadata(config.output).training_data["recipe"]["weight_average"]
    assert "raw weights" in (config.out / "train.log").read_text()

    again = train(config)  # the same plan resumes with its average and trains nothing more
    assert "resumed after epoch" in (config.out / "train.log").read_text()
    assert again["history"] == summary["history"]


def test_validation_report_scores_the_runs_own_split_as_training_did(tiny_run: dict) -> None:
    from model.validation_report import validation_report

    config = tiny_run["config"]
    report = validation_report(config.out, config.output, n_boot=10)
    trained = tiny_run["summary"]["validation_metrics"]
    assert report["model"] == "tiny-test" and report["threshold"] == pytest.approx(trained["threshold"])
    # The fp16 checkpoint through the serving path against the training loop's scores of the same images: with this
    # tiny net and about 30 images, a few near-tied pairs may swap (each moves the AUC by about 0.005).
    assert report["populations"]["adult"]["n"] == trained["n"]
    assert report["populations"]["adult"]["auc"] == pytest.approx(trained["auc"], abs=0.05)
    folder = report["positive_folders"]["adult PNEUMONIA"]  # the only positive folder: the same question
    assert folder["auc"] == pytest.approx(report["populations"]["adult"]["auc"])
    split = json.loads((config.out / "split.json").read_text())
    assert folder["n_positive"] + folder["n_negative"] == len(split["val"])


def test_each_positive_folder_is_judged_against_its_own_populations_normals() -> None:
    from model.data import Sample
    from model.validation_report import positive_folders

    def sample(folder: str, label: int, population: str = "adult") -> Sample:
        return Sample(Path(f"{folder}.png"), label, "p", folder, population=population)

    samples = [sample("NORMAL", 0)] * 4 + [sample("COVID", 1)] * 2 + [sample("PNEUMONIA", 1)] * 2 + [
        sample("NORMAL", 0, "pediatric"), sample("PNEUMONIA", 1, "pediatric")]
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.9, 0.8, 0.25, 0.7, 0.5, 0.4])
    folders = positive_folders(scores, samples, threshold=0.5, sensitivity=1.0)
    assert set(folders) == {"adult COVID", "adult PNEUMONIA", "pediatric PNEUMONIA"}
    covid, pneumonia = folders["adult COVID"], folders["adult PNEUMONIA"]
    assert covid["auc"] == 1.0 and covid["sensitivity"] == 1.0 and covid["specificity"] == 0.75
    assert covid["specificity_at_target_sensitivity"] == 1.0  # catching both COVID films (>= 0.8) flags no normal
    assert pneumonia["auc"] == pytest.approx(6 / 8) and pneumonia["sensitivity"] == 0.5
    assert pneumonia["specificity_at_target_sensitivity"] == 0.5  # catching 0.25 flags the normals at 0.3 and 0.6
    assert folders["pediatric PNEUMONIA"]["auc"] == 0.0  # children against children's normals only

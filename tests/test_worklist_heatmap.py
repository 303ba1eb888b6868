"""Grad-CAM (model.heatmap) and the worker's preview pictures (worker.previews): the fast path that reuses the
scoring pass gives the textbook autograd map, the PNGs show the display image the model saw, and a picture that
cannot be written never fails an instance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dicom_io.display import display_image
from dicom_io.synthetic import chest_dataset
from model.checkpoint import CheckpointMetadata, save_checkpoint
from model.heatmap import ActivationCapture, cam_from_activations, grad_cam, upsample
from model.inference import Classifier
from model.network import build_network
from model.preprocess import to_model_input
from worker import previews
from worker.config import WorkerConfig

MID_RANGE_VERSION = "test-untrained-mid-range-head"


def mid_range_checkpoint(path: Path) -> Path:
    """A test model: the seeded untrained ResNet50 with its head rescaled so that scores land mid-range (the
    shipped placeholder's are ~1e-20, all alike) and the positive class has evidence somewhere (its Grad-CAM map is
    not empty). Still untrained — the metadata says so, and the product shows the banner."""
    if path.is_file():
        return path
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        network = build_network()
    finally:
        torch.random.set_rng_state(state)
    with torch.no_grad():
        normal = network.fc.weight[0].clone()
        network.fc.weight[0] = -0.02 * normal
        network.fc.weight[1] = 0.02 * normal
        network.fc.bias.zero_()
    save_checkpoint(network, CheckpointMetadata(version=MID_RANGE_VERSION, trained=False), path)
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return Classifier(mid_range_checkpoint(tmp_path_factory.mktemp("models") / "mid.safetensors"), device="cpu")


def _inputs(classifier: Classifier, **kwargs: object) -> tuple[np.ndarray, torch.Tensor]:
    display = display_image(chest_dataset(**kwargs))  # type: ignore[arg-type]
    return display, to_model_input(display, classifier.preprocess)[None]


@pytest.fixture(scope="module")
def fp32_classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The same model scored in fp32 on any CPU: on one with native bf16 the scoring pass runs in bf16 while
    autograd Grad-CAM runs in fp32, and the two would differ by bf16's rounding, not by the maths under test."""
    path = mid_range_checkpoint(tmp_path_factory.mktemp("models-fp32") / "mid.safetensors")
    return Classifier(path, device="cpu", allow_bf16=False)


def test_grad_cam_from_the_scoring_pass_equals_autograd_grad_cam(fp32_classifier: Classifier) -> None:
    classifier = fp32_classifier
    _, batch = _inputs(classifier, opacity=True)
    capture = ActivationCapture(classifier.network)
    try:
        score = float(classifier.score(batch)[0])
        captured = capture.take()
        assert capture.take() is None  # taken once
    finally:
        capture.remove()
    assert captured is not None and captured.activations.shape == (1, 2048, 7, 7)
    fast = cam_from_activations(captured.activations, classifier.network.fc.weight, 1)[0]
    textbook, probabilities = grad_cam(classifier.network, batch, 1)
    assert probabilities[0] == pytest.approx(score, rel=1e-4)
    assert 0.05 < score < 0.95  # the test model is mid-range, as meant
    assert fast.max() > 0, "the positive class has evidence somewhere: the map must not be empty"
    # Grad-CAM's channel weights are the mean gradient, fc.weight / (7*7): the same map up to that factor.
    np.testing.assert_allclose(fast / fast.max(), textbook[0] / textbook[0].max(), atol=1e-4)
    heat = upsample(fast, 512, 448)
    assert heat.shape == (512, 448) and heat.max() == pytest.approx(1.0) and heat.min() >= 0


def test_previews_show_the_display_image_and_a_coloured_overlay(classifier: Classifier, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    display, batch = _inputs(classifier, opacity=True, rows=1024, columns=900)
    calls: list[int] = []
    real_grad_cam = previews.grad_cam
    monkeypatch.setattr(previews, "grad_cam", lambda *a, **k: calls.append(1) or real_grad_cam(*a, **k))

    score = float(classifier.score(batch)[0])  # scored before the writer hooked the network
    writer = previews.PreviewWriter(tmp_path, classifier)
    first = previews.write_previews(writer, "ab12", display, batch, score)
    assert first.preview and first.heatmap and calls == [1]  # no pass captured yet: Grad-CAM ran itself
    second = previews.write_previews(writer, "ab13", display, batch, float(classifier.score(batch)[0]))
    assert second.heatmap and calls == [1]  # this time the scoring pass was reused

    preview = Image.open(first.preview)
    assert preview.mode == "L" and preview.size == (450, 512)  # long side 512, aspect kept
    expected = np.asarray(Image.fromarray(np.rint(display * 255).astype(np.uint8)).resize((450, 512)), float)
    assert np.abs(np.asarray(preview, float) - expected).mean() < 3  # the same picture the model saw
    heatmap = np.asarray(Image.open(first.heatmap), dtype=float)
    assert heatmap.shape == (512, 450, 3)
    assert np.abs(heatmap[..., 0] - heatmap[..., 2]).max() > 60  # colour was laid over the grey somewhere
    assert Path(first.heatmap).name == f"ab12.{classifier.sha256[:12]}.heatmap.png"
    full = np.asarray(Image.open(first.display), dtype=float)  # the zoom: every pixel of the display image
    assert full.shape == display.shape == (1024, 900)
    assert np.abs(full - np.rint(display * 255)).max() <= 1


def test_an_empty_map_is_said_on_the_picture(tmp_path: Path, model_path: Path) -> None:
    untrained = Classifier(model_path, device="cpu")  # the placeholder: no evidence for the positive class
    display, batch = _inputs(untrained)
    writer = previews.PreviewWriter(tmp_path, untrained)
    written = previews.write_previews(writer, "cd34", display, batch, float(untrained.score(batch)[0]))
    assert written.heatmap is not None
    picture = np.asarray(Image.open(written.heatmap).convert("L"), dtype=float)
    strip = picture[-10:]
    assert (strip < 10).mean() > 0.5 and strip.max() > 200  # the dark caption strip with white text


def test_a_preview_failure_never_fails_the_instance(tmp_path: Path, model_path: Path) -> None:
    from pipelines import worker_pipeline

    blocked = tmp_path / "previews"
    blocked.write_text("a file where the folder should be")
    config = WorkerConfig(database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", broker_url="filesystem://",
                          spool_dir=tmp_path / "spool", rejected_dir=tmp_path / "rejected",
                          queue_dir=tmp_path / "queue", model_path=model_path, model_cache_dir=tmp_path / "models",
                          device="cpu", previews_dir=blocked)
    source = tmp_path / "chest.dcm"
    chest_dataset(patient_index=5).save_as(source, enforce_file_format=True)
    outcome = worker_pipeline(config).analyse(source)
    assert outcome.status.value == "DONE" and outcome.score is not None
    assert outcome.preview_path is None and outcome.heatmap_path is None


def test_a_lateral_view_gets_a_preview_but_no_score_and_no_heat_map(tmp_path: Path, model_path: Path) -> None:
    """The study page shows every image: a lateral is not scored (NOT_ANALYSED, LATERAL_VIEW) but its picture is
    written, rendered like a scored one; a worker without a previews folder writes none."""
    from pipelines import worker_pipeline

    config = WorkerConfig(database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", broker_url="filesystem://",
                          spool_dir=tmp_path / "spool", rejected_dir=tmp_path / "rejected",
                          queue_dir=tmp_path / "queue", model_path=model_path, model_cache_dir=tmp_path / "models",
                          device="cpu", previews_dir=tmp_path / "previews")
    source = tmp_path / "lateral.dcm"
    lateral = chest_dataset(patient_index=6, view="LL")
    lateral.save_as(source, enforce_file_format=True)
    pipeline = worker_pipeline(config)
    outcome = pipeline.analyse(source)
    assert outcome.status.value == "NOT_ANALYSED" and outcome.reason == "LATERAL_VIEW"
    assert outcome.score is None and outcome.heatmap_path is None and outcome.preview_path is not None
    picture = np.asarray(Image.open(outcome.preview_path))
    expected = np.asarray(previews.preview_image(display_image(lateral)))
    assert picture.shape == expected.shape and np.array_equal(picture, expected)
    full = np.asarray(Image.open(outcome.display_path))
    assert full.shape == display_image(lateral).shape  # full size for the zoom, laterals included

    pipeline.previews = None
    assert pipeline.analyse(source).preview_path is None
    not_chest = tmp_path / "knee.dcm"
    chest_dataset(patient_index=7, body_part="KNEE").save_as(not_chest, enforce_file_format=True)
    assert worker_pipeline(config).analyse(not_chest).preview_path is None  # only laterals are shown unscored

"""Per-image pictures for the worklist: the display image the model saw, downscaled, its Grad-CAM overlay, and the
same display image at its full resolution (what the page's zoom shows); for a lateral view (not scored, but read
beside the frontal one) the display image alone, downscaled and full size.

Written by the worker right after an image is scored (or found to be a lateral view), into
``<data_dir>/previews/`` (a shared volume in a fleet, like the spool), and served by the web page from the paths
recorded with the instance. A preview is a nicety:
nothing here may fail an instance, so :func:`write_previews` logs and returns no paths instead of raising.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dicom_io.display import render
from model.heatmap import ActivationCapture, cam_from_activations, grad_cam, upsample
from model.inference import Classifier

log = logging.getLogger(__name__)

PREVIEW_LONG_SIDE = 512
OVERLAY_OPACITY = 0.6
OVERLAY_FLOOR = 0.15  # map values below this stay plain grey, so the picture is not washed over
# A blue → cyan → green → yellow → red ramp (value 0 → 1).
_RAMP_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_RGB = np.array([[48, 18, 160], [20, 160, 230], [40, 200, 90], [250, 220, 30], [220, 30, 30]], dtype=np.float32)


@dataclass(frozen=True)
class Previews:
    """Absolute paths of the written PNG files (None where nothing was written)."""

    preview: str | None = None
    heatmap: str | None = None
    display: str | None = None  # the display image at full resolution (8-bit grey, after the LUTs)


def _atomic_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".preview-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", compress_level=3)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def preview_image(display: np.ndarray, long_side: int = PREVIEW_LONG_SIDE) -> Image.Image:
    """The [0, 1] display image as 8-bit grey, shrunk (never enlarged) to ``long_side`` on its longer side."""
    grey = np.clip(np.nan_to_num(display, nan=0.0), 0.0, 1.0)
    image = Image.fromarray(np.rint(grey * 255).astype(np.uint8), mode="L")
    height, width = grey.shape
    scale = long_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def overlay(preview: Image.Image, heat: np.ndarray) -> Image.Image:
    """The grey preview with the [0, 1] heat map (same size) blended on top in colour."""
    grey = np.asarray(preview, dtype=np.float32)[..., None].repeat(3, axis=2)
    colour = np.stack([np.interp(heat, _RAMP_STOPS, _RAMP_RGB[:, channel]) for channel in range(3)], axis=2)
    alpha = (OVERLAY_OPACITY * np.clip((heat - OVERLAY_FLOOR) / (1 - OVERLAY_FLOOR), 0, 1))[..., None]
    blended = grey * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), mode="RGB")


EMPTY_MAP_TEXT = "Heat map empty: nothing here raised the score"


def caption(image: Image.Image, text: str) -> Image.Image:
    """A dark strip with white text along the bottom (so a blank overlay is never mistaken for a failure)."""
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    size = max(10, image.width // 32)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an older Pillow or no FreeType: the small bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(3, size // 3)
    y = image.height - (bottom - top) - 2 * pad
    draw.rectangle((0, y, image.width, image.height), fill=(0, 0, 0))
    draw.text(((image.width - (right - left)) // 2, y + pad - top), text, fill=(255, 255, 255), font=font)
    return image


class PreviewWriter:
    """One per loaded classifier: hooks layer4 so the heat map comes from the pass that produced the score."""

    def __init__(self, directory: Path, classifier: Classifier) -> None:
        self.directory = Path(directory)
        self.classifier = classifier
        self.capture = ActivationCapture(classifier.network)

    def paths(self, key: str) -> tuple[Path, Path]:
        folder = self.directory / key[:2]
        return folder / f"{key}.png", folder / f"{key}.{self.classifier.sha256[:12]}.heatmap.png"

    def display_path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.full.png"

    def write_display(self, key: str, display: np.ndarray) -> str | None:
        """The display image at full resolution, for the zoom; a failure (a full disk) only loses the zoom."""
        path = self.display_path(key)
        try:
            _atomic_png(preview_image(display, long_side=max(display.shape)), path)
        except Exception:
            log.warning("full-size image for %s not written", key, exc_info=True)
            return None
        return str(path)

    def heat_map(self, batch: torch.Tensor, score: float) -> np.ndarray:
        """The (h, w) Grad-CAM map of the first image of ``batch``, from the captured pass when it is the one
        that gave ``score`` (same thread, same probability), else by running Grad-CAM on ``batch`` again."""
        positive = self.classifier.metadata.positive_class
        captured = self.capture.take()
        if captured is not None:
            probability = float(torch.softmax(captured.logits, dim=1)[0, positive])
            if np.isclose(probability, score, rtol=1e-4, atol=0.0):
                head = self.classifier.network.fc
                assert isinstance(head, torch.nn.Linear)  # torchvision's ResNet50 classifier head
                fc = head.weight
                return cam_from_activations(captured.activations[:1], fc, positive)[0]
        maps, _ = grad_cam(self.classifier.network, batch[:1].to(self.classifier.device), positive)
        return maps[0]

    def write(self, key: str, display: np.ndarray, batch: torch.Tensor, score: float) -> Previews:
        preview_path, heatmap_path = self.paths(key)
        preview = preview_image(display)
        _atomic_png(preview, preview_path)
        full = self.write_display(key, display)
        try:
            heat = upsample(self.heat_map(batch, score), preview.height, preview.width)
            picture = overlay(preview, heat)
            if not heat.any():  # Grad-CAM is ReLU'd: no region pushed the positive class up
                picture = caption(picture, EMPTY_MAP_TEXT)
            _atomic_png(picture, heatmap_path)
        except Exception:
            log.warning("heat map for %s not written", key, exc_info=True)
            return Previews(str(preview_path), None, full)
        return Previews(str(preview_path), str(heatmap_path), full)


def write_unscored_preview(writer: PreviewWriter | None, key: str, ds: Any) -> Previews:
    """The preview of an image the model does not score but a reader looks at (a lateral view): the display image
    rendered as for a scored one (same LUTs, same size), no heat map. Never raises: a picture that cannot be made
    (unreadable pixels, a full disk) is logged and leaves the path empty; the instance keeps its reason."""
    if writer is None:
        return Previews()
    try:
        preview_path, _ = writer.paths(key)
        display = render(ds).image
        _atomic_png(preview_image(display), preview_path)
        return Previews(str(preview_path), None, writer.write_display(key, display))
    except Exception:
        log.warning("preview for %s not written", key, exc_info=True)
        return Previews()


def write_previews(writer: PreviewWriter | None, key: str, display: np.ndarray, batch: torch.Tensor,
                   score: float) -> Previews:
    """Write the preview and heat map of one scored image (``key``: a file-name-safe id, e.g. the spool file's
    stem). Never raises: a failure is logged and leaves the paths empty."""
    if writer is None:
        return Previews()
    try:
        return writer.write(key, display, batch, score)
    except Exception:
        log.warning("previews for %s not written", key, exc_info=True)
        return Previews()

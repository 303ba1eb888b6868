"""Display image → model input. One function, shared by training and serving, so they cannot drift apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _triple(values: Any) -> tuple[float, float, float]:
    """A per-channel mean or std from a checkpoint's JSON (a list of three numbers)."""
    first, second, third = (float(v) for v in values)
    return first, second, third


@dataclass(frozen=True)
class PreprocessSpec:
    """How a [0, 1] grayscale display image becomes the network input; stored in every checkpoint."""

    size: int = 224
    resize: str = "stretch"  # the whole image to size×size, aspect not kept (as the training data was made)
    # Histogram equalisation after the resize: every source's exposure, window and bit depth map onto the same
    # flat histogram, so the network cannot tell hospitals apart by brightness or contrast (older checkpoints: off).
    equalize: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, object]:
        """JSON-native (lists, not tuples), so a dict read back from a checkpoint compares equal."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        if data.get("resize", "stretch") != "stretch":
            raise ValueError(f"unsupported resize mode {data.get('resize')!r}")
        return cls(
            size=int(data["size"]),
            resize="stretch",
            equalize=bool(data.get("equalize", False)),
            mean=_triple(data["mean"]),
            std=_triple(data["std"]),
        )


def stretch(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, H, W) display images in [0, 1] → (N, 1, size, size), antialiased bilinear: the one resize that
    serving and training share, so neither can drift from the other."""
    resized = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp_(0.0, 1.0)


EQUALIZE_LEVELS = 256


def equalize_histogram(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) in [0, 1] → the same shape, each image's grey levels replaced by their cumulative share of pixels
    (256 levels, mid-rank for ties), so any monotonic change of exposure or window gives the same output."""
    n = images.shape[0]
    levels = (images.reshape(n, -1).clamp(0.0, 1.0) * (EQUALIZE_LEVELS - 1)).round_().long()
    counts = torch.zeros(n, EQUALIZE_LEVELS, dtype=torch.float32, device=images.device)
    counts.scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float32))
    below = counts.cumsum(1) - counts
    mid_rank = (below + 0.5 * counts) / levels.shape[1]
    return mid_rank.gather(1, levels).reshape(images.shape)


def normalize(stretched: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(N, 1, S, S) in [0, 1] → (N, 3, S, S): equalised when the checkpoint says so, grey repeated to three
    channels, the checkpoint's mean and std."""
    if spec.equalize:
        stretched = equalize_histogram(stretched)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=stretched.device)[None, :, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32, device=stretched.device)[None, :, None, None]
    return ((stretched.expand(-1, 3, -1, -1) - mean) / std).contiguous()


def to_model_input(display: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """A (3, size, size) float32 tensor from a 2-D display image in [0, 1]."""
    if display.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {display.shape}")
    image = torch.from_numpy(np.ascontiguousarray(display, dtype=np.float32))[None, None]
    return normalize(stretch(image, spec.size), spec)[0]

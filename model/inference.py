"""Inference: a loaded checkpoint on the best device, scoring batches of preprocessed inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import CheckpointMetadata, load_checkpoint
from model.precision import autocast_dtype, precision_name
from model.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


def pick_device(requested: str = "") -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def positive_probabilities(network: torch.nn.Module, batch: torch.Tensor, device: torch.device,
                           positive_class: int = 1, precision: torch.dtype | None = None) -> np.ndarray:
    """Softmax probability of ``positive_class`` for a (N, 3, H, W) batch: channels-last, autocast in
    ``precision`` (``model.precision.autocast_dtype``) or fp32. Serving and the training's validation pass both
    score through here."""
    inputs = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
        logits = network(inputs)
    return torch.softmax(logits.float(), dim=1)[:, positive_class].cpu().numpy()


class Classifier:
    """Loaded once per worker process; ``score`` returns the positive-class probability per input."""

    def __init__(self, checkpoint_path: Path, device: str = "", allow_bf16: bool = True) -> None:
        loaded = load_checkpoint(checkpoint_path)
        self.metadata: CheckpointMetadata = loaded.metadata
        self.sha256 = loaded.sha256
        self.path = loaded.path
        self.device = pick_device(device)
        self.preprocess: PreprocessSpec = loaded.metadata.preprocess_spec
        self.network = loaded.network.to(self.device).to(memory_format=torch.channels_last)
        self.precision = autocast_dtype(self.device, allow_bf16)
        log.info("model %s (sha256 %s…) on %s, %s", self.version, self.sha256[:12], self.device,
                 precision_name(self.precision))

    @property
    def version(self) -> str:
        return self.metadata.version

    def score(self, batch: torch.Tensor) -> np.ndarray:
        """Positive-class probabilities for a (N, 3, H, W) batch."""
        return positive_probabilities(self.network, batch, self.device, self.metadata.positive_class,
                                      self.precision)

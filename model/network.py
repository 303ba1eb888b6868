"""The network: torchvision's ResNet50 with a two-class head, as in the originating study."""

from __future__ import annotations

import torch
from torchvision.models import resnet50

ARCHITECTURE = "resnet50"


def build_network(num_classes: int = 2) -> torch.nn.Module:
    """A ResNet50 without pretrained weights (none can be downloaded here); weights come from a checkpoint."""
    return resnet50(weights=None, num_classes=num_classes)

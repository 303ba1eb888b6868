"""Grad-CAM heat maps for the torchvision ResNet50: where, in the last conv block (``layer4``), the evidence for
the positive class lies. Shown next to the score as triage support, never as a finding.

Two ways to the same map:

- :func:`grad_cam` is textbook Grad-CAM (Selvaraju et al. 2017) with autograd: the gradient of the positive-class
  logit with respect to ``layer4``'s output, averaged over space, weights that output's channels; ReLU.
- :class:`ActivationCapture` keeps ``layer4``'s output from the forward pass the classifier already ran for the
  score, and :func:`cam_from_activations` turns it into the map with no second pass. For ResNet50 the head after
  ``layer4`` is global average pooling and one linear layer, so the logit's gradient with respect to every
  position of channel k is exactly ``fc.weight[c, k] / (H*W)``: Grad-CAM's channel weights *are* the fc weights,
  and both functions give the same map (a unit test holds them to it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def target_layer(network: torch.nn.Module) -> torch.nn.Module:
    """The last convolutional block of a torchvision ResNet."""
    layer = getattr(network, "layer4", None)
    if layer is None:
        raise ValueError("not a torchvision ResNet: no layer4")
    return layer


def grad_cam(network: torch.nn.Module, inputs: torch.Tensor, target_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM by autograd for a (N, 3, H, W) batch: ``(maps, probabilities)``.

    ``maps`` is (N, h, w) float32, ReLU'd and not normalised (h, w = layer4's grid, 7×7 at 224); ``probabilities``
    is the softmax probability of ``target_class`` from the same forward pass. Only the head (pooling + fc) is
    differentiated: layer4's output is cut from the graph below it, so no parameter gradients are computed.
    """
    captured: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().float().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = target_layer(network).register_forward_hook(keep)
    try:
        with torch.enable_grad(), torch.autocast(inputs.device.type, enabled=False):
            logits = network(inputs.float())
            activations = captured[-1]
            (gradients,) = torch.autograd.grad(logits[:, target_class].sum(), activations)
    finally:
        handle.remove()
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    maps = F.relu((weights * activations).sum(dim=1))
    probabilities = torch.softmax(logits.detach().float(), dim=1)[:, target_class]
    return maps.detach().cpu().numpy().astype(np.float32), probabilities.cpu().numpy()


def cam_from_activations(activations: torch.Tensor, fc_weight: torch.Tensor, target_class: int) -> np.ndarray:
    """Grad-CAM from layer4's output (N, C, h, w) and the fc weight (classes, C); (N, h, w) float32, ReLU'd."""
    with torch.no_grad():
        weights = fc_weight[target_class].detach().float().to(activations.device)
        maps = F.relu(torch.einsum("nchw,c->nhw", activations.float(), weights))
    return maps.cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class Captured:
    """What one forward pass left behind, on the thread that ran it."""

    activations: torch.Tensor  # layer4 output, (N, C, h, w), detached, float32, on the CPU
    logits: torch.Tensor  # network output, (N, classes), float32, on the CPU


class ActivationCapture:
    """Forward hooks that keep the latest layer4 output and logits per thread (inference is not slowed down:
    copying a 2048×7×7 map is microseconds). Several Celery threads each see only their own pass."""

    def __init__(self, network: torch.nn.Module) -> None:
        self._local = threading.local()
        self._pending = threading.local()
        self._handles = [
            target_layer(network).register_forward_hook(self._keep_activations),
            network.register_forward_hook(self._keep_logits),
        ]

    def _keep_activations(self, _module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._pending.activations = output.detach().float().cpu()

    def _keep_logits(self, _module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        activations = getattr(self._pending, "activations", None)
        self._pending.activations = None
        if activations is not None:
            self._local.latest = Captured(activations, output.detach().float().cpu())

    def take(self) -> Captured | None:
        """The latest pass of this thread, once (a second call returns None until the next pass)."""
        latest = getattr(self._local, "latest", None)
        self._local.latest = None
        return latest

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """One (h, w) map to (height, width), bilinear, scaled to [0, 1] by its maximum (all zeros stays zeros).

    The model saw the whole image stretched to a square, so stretching the map back over the whole image puts
    every cell where it came from.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    peak = float(resized.max())
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros((height, width), dtype=np.float32)
    return (resized.clamp(min=0) / peak).numpy().astype(np.float32)

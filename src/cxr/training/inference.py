"""Inference: uint8 pixels → the input statistics of a model's weights → logits, in batches.

The one path from a pixel store to a model's outputs, used by validation, evaluation, Grad-CAM
and `cxr-predict`: `Normalize` turns 8-bit grayscale into three identical channels normalised
with the statistics the architecture's pretrained weights expect (`ModelSpec.mean`/`std`).
"""

from __future__ import annotations

import torch
from torch import nn

from cxr.training.models import MODEL_SPECS


class Normalize(torch.nn.Module):
    """uint8 (N, 1, H, W) → float (N, 3, H, W) with the input statistics of `arch`'s pretrained
    weights (`ModelSpec.mean`/`std`, see cxr.training.models)."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        spec = MODEL_SPECS[arch]
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        gray = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels
        return (gray.expand(-1, 3, -1, -1) - self.mean) / self.std


def batch_indices(n: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Consecutive index batches over n items, in order (inference: evaluation, Grad-CAM)."""
    return torch.arange(n).split(batch_size)


@torch.no_grad()
def predict_logits(
    model: nn.Module, arch: str, pixels: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits for every image, in order, on the CPU."""
    model.eval()
    normalize = Normalize(arch).to(device)
    outputs = [
        model(normalize(pixels[index].to(device))).float().cpu()
        for index in batch_indices(len(pixels), batch_size)
    ]
    return torch.cat(outputs)

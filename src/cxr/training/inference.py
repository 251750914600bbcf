"""Inference: uint8 pixels → the input statistics of a model's weights → logits, in batches.

The one path from a pixel store to a model's inputs (`normalized_batches`), used by validation
and evaluation (`predict_logits`), Grad-CAM and `cxr-predict`: `Normalize` turns 8-bit
grayscale into three identical channels normalised with the statistics the architecture's
pretrained weights expect (`ModelSpec.mean`/`std`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from cxr.core.progress import progress
from cxr.training.models import MODELS


class Normalize(torch.nn.Module):
    """uint8 (N, 1, H, W) → float (N, 3, H, W) with the input statistics of `arch`'s pretrained
    weights (`ModelSpec.mean`/`std`, see cxr.training.models)."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        spec = MODELS[arch]
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        gray = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels
        return (gray.expand(-1, 3, -1, -1) - self.mean) / self.std


def normalized_batches(
    pixels: torch.Tensor, arch: str, batch_size: int, device: torch.device, desc: str = ""
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(indices, model inputs on `device`) for consecutive batches of a uint8 pixel store, in
    order (progress shown under `desc`, if given)."""
    normalize = Normalize(arch).to(device)
    batches: Iterable[torch.Tensor] = torch.arange(len(pixels)).split(batch_size)
    if desc:
        batches = progress(batches, desc, unit="batches")
    for index in batches:
        yield index, normalize(pixels[index].to(device))


@torch.no_grad()
def predict_logits(
    model: nn.Module, arch: str, pixels: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits for every image, in order, on the CPU."""
    model.eval()
    outputs = [
        model(inputs).float().cpu()
        for _, inputs in normalized_batches(pixels, arch, batch_size, device)
    ]
    return torch.cat(outputs)

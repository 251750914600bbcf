"""Class probabilities of many images: LIME's perturbed copies and the deletion/insertion
steps, which cost one forward pass each and are most of the gradcam stage's time.

Images go through the model's own normalisation (cxr.training.inference.Normalize) under
`torch.inference_mode()`, in the channels_last layout, in chunks of a fixed number of pixels
(`batch_size_for`). Measured (benchmarks/explanation_cost.py and its notes; ms per image):

- on an idle core, small chunks of large images are fast, their activations stay in cache:
  efficientnet_lite0 at 224 px, one thread, channels_last 22-24 at 8 images, 27-30 at 16, 33-35
  at 32, 37-39 at 64 (the default layout: 29, 41, 48-50, 57-66);
- small images want large chunks (resnet18 at 32 px: 1.9 at 8 images, 0.7 at 256);
- with more threads than free cores (another job running) every forward pass pays a large
  fixed cost, and large chunks win by far (lite0 at 224 px, 2 threads on 2 busy cores: 200-250
  at 8 images, 145 at 16, 85 at 32, 65 at 64).

Hence `CPU_PIXELS`: 16 images' worth at 224 px, a little above the idle optimum (8) and far
better than it on a busy machine. GPUs want large batches. The chunk size is a function of the
image size only, so results are reproducible; they do not depend on it beyond float rounding
(tests/explanation/test_batching.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxr.training.inference import Normalize

# Pixels per forward pass by device type: 16 (CPU) or 256 (others) images of 224 x 224.
CPU_PIXELS = 16 * 224 * 224
ACCELERATOR_PIXELS = 256 * 224 * 224
MAX_BATCH = 256  # images per forward pass at most (small images)


def batch_size_for(device: torch.device, image_pixels: int) -> int:
    """Images per forward pass for images of `image_pixels` pixels on `device` (see above)."""
    budget = CPU_PIXELS if torch.device(device).type == "cpu" else ACCELERATOR_PIXELS
    return int(min(MAX_BATCH, max(1, budget // max(1, image_pixels))))


def fast_layout(inputs: torch.Tensor) -> torch.Tensor:
    """Model inputs in the channels_last layout, which convolutions run fastest in on CPUs
    (whatever the model's own layout: the input's decides the kernels)."""
    return inputs.contiguous(memory_format=torch.channels_last)


class Scorer:
    """Softmax probabilities (n, C) of a model for images: uint8 (0-255) or float in [0, 1],
    shaped (n, H, W) or (n, 1, H, W), numpy or torch, in chunks of `batch_size` (default:
    `batch_size_for` the device and the images' size)."""

    def __init__(
        self, model: nn.Module, arch: str, device: torch.device, batch_size: int | None = None
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.normalize = Normalize(arch).to(self.device)
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        batch = torch.as_tensor(images)
        if batch.dim() == 3:
            batch = batch[:, None]
        if batch.is_floating_point():
            batch = batch.float()
        self.model.eval()
        outputs = []
        size = self.batch_size or batch_size_for(self.device, batch.shape[-2] * batch.shape[-1])
        with torch.inference_mode():
            for chunk in batch.split(size):
                inputs = fast_layout(self.normalize(chunk.to(self.device)))
                outputs.append(self.model(inputs).float().softmax(1).cpu())
        if not outputs:
            return np.zeros((0, 0), np.float32)
        return torch.cat(outputs).numpy()

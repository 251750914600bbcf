"""Grad-CAM (Selvaraju et al., 2017) through tensor hooks, and its localisation scores.

A forward hook on the target layer keeps its output and registers a hook on that *tensor*, so
the gradient arrives for exactly that activation (module backward hooks misfire on in-place
operations). The map is ReLU(sum_k alpha_k A_k), alpha_k the spatial mean of dy_c/dA_k,
upsampled to the input size and scaled to [0, 1] per image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class GradCAM:
    """Grad-CAM of one layer of a model; use as a context manager to remove the hooks."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        self.model = model
        self.activations: torch.Tensor | None = None
        self.gradients: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._keep_activation)

    def _keep_activation(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if not output.requires_grad:  # frozen layers: still explainable w.r.t. their output
            output.requires_grad_(True)
        self.activations = output
        output.register_hook(self._keep_gradient)

    def _keep_gradient(self, grad: torch.Tensor) -> None:
        self.gradients = grad

    def __enter__(self) -> GradCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        self._handle.remove()

    def __call__(
        self, inputs: torch.Tensor, class_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Heat maps (N, H, W) in [0, 1] for `class_index` (default: the predicted class),
        and the softmax probabilities (N, C)."""
        self.model.eval()
        with torch.enable_grad():
            logits = self.model(inputs)
            if class_index is None:
                class_index = logits.argmax(1)
            self.model.zero_grad(set_to_none=True)
            logits.gather(1, class_index.view(-1, 1).to(logits.device)).sum().backward()
        assert self.activations is not None and self.gradients is not None
        weights = self.gradients.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * self.activations).sum(dim=1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[:, 0]
        low = cam.amin(dim=(1, 2), keepdim=True)
        high = cam.amax(dim=(1, 2), keepdim=True)
        cam = (cam - low) / (high - low).clamp_min(1e-12)
        return cam.cpu(), logits.detach().softmax(1).cpu()


def localisation(cam: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How much of a heat map lies on a mask.

    energy_in_mask: share of the map's total mass inside the mask; mask_area: the mask's share
    of the image (what a uniform map would score); pointing_hit: whether the map's peak is
    inside the mask (the pointing game).
    """
    inside = mask.astype(bool)
    total = float(cam.sum())
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return {
        "energy_in_mask": float(cam[inside].sum()) / total if total > 0 else 0.0,
        "mask_area": float(inside.mean()),
        "pointing_hit": float(inside[peak]),
    }


def compute_cams(
    explainer: GradCAM,
    pixels: torch.Tensor,
    class_index: torch.Tensor | None,
    device: torch.device,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (N, S, S) and probabilities (N, C) for a uint8 pixel store, in batches."""
    from cxr.data import Normalize, batch_indices

    normalize = Normalize().to(device)
    cams, probabilities = [], []
    for index in batch_indices(len(pixels), batch_size, shuffle=False):
        inputs = normalize(pixels[index].to(device))
        target = None if class_index is None else class_index[index]
        cam, prob = explainer(inputs, target)
        cams.append(cam.numpy())
        probabilities.append(prob.numpy())
    return np.concatenate(cams), np.concatenate(probabilities)


def load_masks(masks_dir: Path, files: list[Path], size: int) -> list[np.ndarray | None]:
    """Each file's mask (`<masks_dir>/<Class>/<name>`) resized to the model input, or None
    where there is none or it is empty."""
    from PIL import Image

    from cxr.images import read_mask

    masks: list[np.ndarray | None] = []
    for path in files:
        mask_path = masks_dir / path.parent.name / path.name
        if not mask_path.is_file():
            masks.append(None)
            continue
        mask = read_mask(mask_path).resize((size, size), Image.Resampling.NEAREST)
        array = np.asarray(mask) > 0
        masks.append(array if array.any() else None)
    return masks


def localisation_report(
    cams: np.ndarray, masks: list[np.ndarray | None], labels: np.ndarray, classes: tuple[str, ...]
) -> dict:
    """Mean localisation scores per class over the images that have a (non-empty) mask."""
    per_class: dict[str, dict[str, float]] = {}
    everything: list[dict[str, float]] = []
    for k, name in enumerate(classes):
        scores = [
            localisation(cams[i], mask)
            for i, mask in enumerate(masks)
            if mask is not None and labels[i] == k
        ]
        everything += scores
        if scores:
            per_class[name] = _mean_scores(scores)
    return {
        "images_with_masks": len(everything),
        "overall": _mean_scores(everything) if everything else {},
        "per_class": per_class,
    }


def _mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    return {
        "images": len(scores),
        "energy_in_mask": round(float(np.mean([s["energy_in_mask"] for s in scores])), 6),
        "mask_area": round(float(np.mean([s["mask_area"] for s in scores])), 6),
        "pointing_hit_rate": round(float(np.mean([s["pointing_hit"] for s in scores])), 6),
    }

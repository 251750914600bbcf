"""Grad-CAM (Selvaraju et al., 2017) and Grad-CAM++ (Chattopadhay et al., 2018) through
tensor hooks, and the choice of the layer they explain.

A forward hook on the target layer keeps its output and registers a hook on that *tensor*, so
the gradient arrives for exactly that activation (module backward hooks misfire on in-place
operations). The hook hands a copy of the output on to the rest of the network, so an in-place
activation after the layer (DenseNet's final ReLU) cannot overwrite what is explained; for a
frozen backbone (parameters with requires_grad off) the kept output is made a gradient leaf.

Grad-CAM: ReLU(Σ_k α_k A_k), α_k the spatial mean of ∂y_c/∂A_k. Grad-CAM++ weights each
positive gradient with its second/third-order coefficient instead. Maps are upsampled to the
input size and scaled to [0, 1] per image.

Layer choice: the deepest block has the most class-specific features but, on small inputs,
a tiny map (resnet18 at 64 px: 2x2 at layer4), which cannot point at a lesion. Each
architecture lists candidate layers from deep to shallow (`ModelSpec.cam_layers`) and `auto`
takes the deepest whose map is at least `min_map_size` cells on a side at the model's input size.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.core.errors import ConfigError
from cxr.core.registry import Registry
from cxr.explanation.scoring import batch_size_for, fast_layout
from cxr.training.inference import normalized_batches
from cxr.training.models import MODELS


def gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return gradients.mean(dim=(2, 3), keepdim=True)


def gradcam_pp_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ α from the closed form with an exponential score (the paper's eq. 19)."""
    g2 = gradients.pow(2)
    g3 = gradients.pow(3)
    summed = activations.sum(dim=(2, 3), keepdim=True)
    denominator = 2 * g2 + summed * g3
    alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alpha * F.relu(gradients)).sum(dim=(2, 3), keepdim=True)


# How the gradients of a layer's activations weigh its channels: (activations, gradients) → α.
Weighting = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GradCAM:
    """Grad-CAM or Grad-CAM++ of one layer of a model; a context manager removes the hook."""

    def __init__(
        self, model: nn.Module, layer: nn.Module, weighting: Weighting = gradcam_weights
    ) -> None:
        self.model = model
        self.weighting = weighting
        self.activations: torch.Tensor | None = None
        self.gradients: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._keep_activation)

    def _keep_activation(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        # A frozen backbone yields an output outside the graph: explain it as a leaf.
        kept = output if output.requires_grad else output.detach().requires_grad_(True)
        kept.register_hook(self._keep_gradient)
        self.activations = kept
        return kept.clone()  # later in-place ops change the copy, not the kept activation

    def _keep_gradient(self, grad: torch.Tensor) -> None:
        self.gradients = grad

    def __enter__(self) -> GradCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        self._handle.remove()

    def __call__(
        self, inputs: torch.Tensor, class_index: torch.Tensor | None = None, relative: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Heat maps (N, H, W) for `class_index` (default: the predicted class), and the
        softmax probabilities (N, C). `relative`: each map scaled to [0, 1] by its own
        range; else the raw ReLU(Σ α_k A_k), comparable across the classes of one image."""
        self.model.eval()
        with torch.enable_grad():
            logits = self.model(fast_layout(inputs))
            if class_index is None:
                class_index = logits.argmax(1)
            self.model.zero_grad(set_to_none=True)
            logits.gather(1, class_index.view(-1, 1).to(logits.device)).sum().backward()
        if self.activations is None or self.gradients is None:
            raise RuntimeError("the target layer was not part of the forward pass")
        activations, gradients = self.activations.detach(), self.gradients.detach()
        weights = self.weighting(activations, gradients)
        cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[:, 0]
        self.activations = self.gradients = None
        if not relative:
            return cam.detach().cpu(), logits.detach().softmax(1).cpu()
        low = cam.amin(dim=(1, 2), keepdim=True)
        high = cam.amax(dim=(1, 2), keepdim=True)
        spread = high - low
        # Relative scaling: raw maps of an untrained or deep network can be ~1e-15 everywhere.
        cam = torch.where(spread > 0, (cam - low) / torch.where(spread > 0, spread, 1.0), 0.0)
        return cam.cpu(), logits.detach().softmax(1).cpu()


# gradcam.method -> factory(model, layer) of an explainer: a context manager that, called with
# (inputs, class_index, relative), gives heat maps and probabilities. Methods to come register here.
METHODS: Registry[Callable[[nn.Module, nn.Module], GradCAM]] = Registry(
    "explanation method", "gradcam.method"
)
METHODS.register("gradcam", partial(GradCAM, weighting=gradcam_weights))
METHODS.register("gradcam++", partial(GradCAM, weighting=gradcam_pp_weights))


def map_sizes(
    model: nn.Module, paths: tuple[str, ...], image_size: int
) -> dict[str, tuple[int, int]]:
    """Spatial size of each named layer's output for one image_size x image_size input."""
    sizes: dict[str, tuple[int, int]] = {}

    def keep_size(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            sizes[path] = tuple(output.shape[-2:])

        return hook

    handles = [model.get_submodule(path).register_forward_hook(keep_size(path)) for path in paths]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return sizes


def choose_layer(
    model: nn.Module, arch: str, image_size: int, override: str = "auto", min_map_size: int = 8
) -> tuple[str, nn.Module]:
    """The layer to explain: `override` if not `auto`, else the deepest candidate of the
    architecture whose map has at least `min_map_size` cells a side (or the largest map)."""
    if override != "auto":
        try:
            return override, model.get_submodule(override)
        except AttributeError:
            raise ConfigError(
                f"gradcam.target_layer: {arch} has no layer {override!r}; use auto or one of "
                f"{list(MODELS[arch].cam_layers)}"
            ) from None
    candidates = MODELS[arch].cam_layers
    sizes = map_sizes(model, candidates, image_size)
    chosen = next(
        (path for path in candidates if min(sizes[path]) >= min_map_size),
        max(candidates, key=lambda path: min(sizes[path])),
    )
    return chosen, model.get_submodule(chosen)


def compute_cams(
    explainer: GradCAM,
    pixels: torch.Tensor,
    class_index: torch.Tensor | None,
    device: torch.device,
    arch: str,
    batch_size: int | None = None,
    desc: str = "",
    relative: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (N, S, S) and probabilities (N, C) for a uint8 pixel store, in batches
    (default: the size the device runs fastest, cxr.explanation.scoring; progress shown under
    `desc`, if given); `relative` as for `GradCAM.__call__`."""
    batch_size = batch_size or batch_size_for(device, pixels.shape[-2] * pixels.shape[-1])
    cams, probabilities = [], []
    for index, inputs in normalized_batches(pixels, arch, batch_size, device, desc):
        target = None if class_index is None else class_index[index]
        cam, prob = explainer(inputs, target, relative)
        cams.append(cam.numpy())
        probabilities.append(prob.numpy())
    return np.concatenate(cams), np.concatenate(probabilities)


def class_maps(
    explainer: GradCAM,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    arch: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The predicted class's map of every image (what a reader is shown), the true class's
    (what localisation is scored on) and the probabilities. Where the prediction is right the
    two maps are one, so only the wrongly predicted images' true-class maps are computed."""
    shown, probabilities = compute_cams(
        explainer, pixels, None, device, arch, desc="gradcam: predicted-class maps"
    )
    wrong = np.flatnonzero(probabilities.argmax(1) != labels.numpy())
    true = shown.copy()
    if len(wrong):
        index = torch.from_numpy(wrong)
        true[wrong], _ = compute_cams(
            explainer, pixels[index], labels[index], device, arch, desc="gradcam: true-class maps"
        )
    return shown, true, probabilities

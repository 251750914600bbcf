"""Grad-CAM correctness: every factory architecture, in-place activations, frozen backbones,
a model whose decision is known to come from one quadrant, and the localisation score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxr.data.synthetic import draw_phantom
from cxr.explanation.gradcam import METHODS, GradCAM, choose_layer, class_maps, compute_cams
from cxr.explanation.localisation import localisation
from cxr.training.inference import Normalize
from cxr.training.models import MODELS, build_model


def phantom_batch(size: int, n: int = 2, arch: str = "resnet18") -> torch.Tensor:
    """Normalised chest-like phantoms (structured input, not noise)."""
    pixels = [np.asarray(draw_phantom("COVID", size, seed)[0]) for seed in range(n)]
    return Normalize(arch)(torch.from_numpy(np.stack(pixels)[:, None]))


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_architecture_gives_a_finite_non_constant_map_of_input_size(arch: str):
    torch.manual_seed(0)
    size = max(48, MODELS[arch].min_size + 5)
    model = build_model(arch, num_classes=3).eval()
    path, layer = choose_layer(model, arch, size)
    assert path in MODELS[arch].cam_layers
    inputs = phantom_batch(size)
    spreads = []
    with GradCAM(model, layer) as explainer:
        # Every class: on an untrained network a class can have only negative evidence for an
        # image (SqueezeNet's ReLU head, mid-level layers), and Grad-CAM's ReLU rightly makes
        # that map all zero; so we ask for structure somewhere, and finiteness everywhere.
        for target in range(3):
            cams, probabilities = explainer(inputs, torch.full((2,), target))
            assert cams.shape == (2, size, size)
            assert torch.isfinite(cams).all()
            assert torch.allclose(probabilities.sum(1), torch.ones(2), atol=1e-5)
            spreads.append(cams.amax(dim=(1, 2)) - cams.amin(dim=(1, 2)))
    assert torch.stack(spreads).amax() > 0.5  # a non-constant map, scaled to [0, 1]


def test_auto_layer_keeps_maps_of_at_least_min_map_size():
    model = build_model("resnet18", 3)
    assert choose_layer(model, "resnet18", 64)[0] == "layer2"  # layer4 would be 2x2
    assert choose_layer(model, "resnet18", 256)[0] == "layer4"  # 8x8 there already
    assert choose_layer(model, "resnet18", 64, override="layer4")[0] == "layer4"


def test_unknown_target_layer_is_a_clear_error():
    from cxr.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"gradcam.target_layer: resnet18 has no layer 'layer9'"):
        choose_layer(build_model("resnet18", 3), "resnet18", 64, override="layer9")


def manual_gradcam(features: torch.Tensor, head, target: int) -> torch.Tensor:
    """Grad-CAM by hand with autograd.grad on an explicit split of the network."""
    features = features.detach().requires_grad_(True)
    logits = head(features)
    (grad,) = torch.autograd.grad(logits[:, target].sum(), features)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(1, keepdim=True))
    return cam.detach()


def normalised(cam: torch.Tensor, size: int) -> torch.Tensor:
    cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    low, high = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    return (cam - low) / (high - low).clamp_min(1e-12)


def test_densenet_in_place_relu_matches_a_hand_computed_map():
    """DenseNet applies ReLU(inplace=True) to `features`' output: the hook must explain the
    activation the classifier saw, with its true gradient."""
    torch.manual_seed(0)
    model = build_model("densenet121", 3).eval()
    inputs = phantom_batch(64)

    def head(features: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(F.relu(features), 1).flatten(1)
        return model.classifier(pooled)

    with torch.no_grad():
        features = model.features(inputs)
    expected = normalised(manual_gradcam(features, head, target=1), 64)
    with GradCAM(model, model.features) as explainer:
        cams, _ = explainer(inputs, torch.tensor([1, 1]))
    assert torch.allclose(cams, expected, atol=1e-4)


def test_frozen_backbone_gives_the_same_map_as_a_trainable_one():
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    inputs = phantom_batch(64)
    with GradCAM(model, model.layer2) as explainer:
        trainable, _ = explainer(inputs)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with GradCAM(model, model.layer2) as explainer:
        frozen, _ = explainer(inputs)
    assert torch.allclose(trainable, frozen, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


class QuadrantModel(nn.Module):
    """Only the top-right quadrant reaches the classifier: blob energy there decides the class.
    (Top-right, not a symmetric corner, so a transposed or flipped map would fail.)"""

    def __init__(self, size: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        nn.init.constant_(self.conv.weight, 1 / 27)  # a blur: bright where the blobs are
        nn.init.constant_(self.conv.bias, 0.0)
        mask = torch.zeros(1, 1, size, size)
        mask[..., : size // 2, size // 2 :] = 1
        self.register_buffer("mask", mask)
        self.features = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = self.conv(x) * self.mask
        return self.fc(self.features(seen).mean(dim=(2, 3)))


def blobs_in_every_quadrant(size: int) -> torch.Tensor:
    axis = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    image = torch.zeros(size, size)
    for cy in (size / 4, 3 * size / 4):
        for cx in (size / 4, 3 * size / 4):
            image += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (size / 12) ** 2))
    return image.expand(1, 3, size, size).clone()


@pytest.mark.parametrize("method", METHODS.names())
def test_heat_map_peak_falls_in_the_quadrant_that_decides(method: str):
    size = 32
    model = QuadrantModel(size).eval()
    with torch.no_grad():
        target = int(model(blobs_in_every_quadrant(size)).argmax())
    with METHODS[method](model, model.features) as explainer:
        cams, _ = explainer(blobs_in_every_quadrant(size), torch.tensor([target]))
    row, col = np.unravel_index(int(cams[0].argmax()), (size, size))
    assert row < size // 2 and col >= size // 2, (method, row, col)


def disk(size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius**2


def test_localisation_ranks_a_centred_mask_above_a_corner_one_for_a_centred_lesion():
    size = 64
    y, x = np.mgrid[:size, :size]
    cam = np.exp(-((y - 32) ** 2 + (x - 32) ** 2) / (2 * 6.0**2))  # a map on a centred lesion
    centred = localisation(cam, disk(size, 32, 32, 8))
    corner = localisation(cam, disk(size, 8, 8, 8))
    assert centred["mask_area"] == pytest.approx(corner["mask_area"], rel=0.05)
    assert centred["energy_in_mask"] > 5 * centred["mask_area"]
    assert centred["energy_in_mask"] > 10 * corner["energy_in_mask"]
    assert (centred["pointing_hit"], corner["pointing_hit"]) == (1.0, 0.0)


class Halves(nn.Module):
    """Two feature channels: the image's top half (the bottom zeroed), and its bottom half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-2] // 2
        top, bottom = x[:, :1].clone(), x[:, :1].clone()
        top[..., half:, :] = 0
        bottom[..., :half, :] = 0
        return torch.cat([top, bottom], 1)


class TopOrBottom(nn.Module):
    """Class 0's logit is the brightness of the image's top half, class 1's of its bottom half:
    each class's Grad-CAM map lies in its own half."""

    def __init__(self) -> None:
        super().__init__()
        self.features = Halves()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        half = x.shape[-2] // 2
        return 8 * torch.stack([f[:, 0, :half].mean((1, 2)), f[:, 1, half:].mean((1, 2))], 1)


def test_class_maps_recompute_only_the_wrong_images_and_match_every_true_class_map():
    size = 16
    pixels = torch.full((4, 1, size, size), 150, dtype=torch.uint8)
    pixels[[0, 2], :, : size // 2] = 230  # brighter top: predicted class 0
    pixels[[1, 3], :, size // 2 :] = 230  # brighter bottom: predicted class 1
    labels = torch.tensor([0, 1, 1, 0])  # images 2 and 3 are predicted wrong
    model, cpu = TopOrBottom().eval(), torch.device("cpu")
    with METHODS["gradcam"](model, model.features) as explainer:
        shown, true, probabilities = class_maps(explainer, pixels, labels, cpu, "resnet18")
        predicted_maps, _ = compute_cams(explainer, pixels, None, cpu, "resnet18")
        true_maps, _ = compute_cams(explainer, pixels, labels, cpu, "resnet18")
    assert probabilities.argmax(1).tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(shown, predicted_maps)
    np.testing.assert_array_equal(true, true_maps)
    # where wrong, the shown (predicted) and the true class's maps lie in opposite halves
    for i in (2, 3):
        assert not np.array_equal(shown[i], true[i])
        top = true[i][: size // 2].sum() > true[i][size // 2 :].sum()
        assert top == (labels[i] == 0)

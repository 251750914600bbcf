"""Batching changes the cost of LIME and of the deletion/insertion curves, not their results:
on real X-rays, the batched paths (cxr.explanation.scoring, `batched_data_labels`, `curves`)
equal lime's own sample-by-sample loop and a one-image-at-a-time scoring of every curve."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxr.explanation.faithfulness import (
    area,
    curves,
    deletion_insertion,
    perturbation_series,
    pixel_order,
)
from cxr.explanation.lime_explain import batched_lime, lime_map, lime_maps
from cxr.explanation.scoring import Scorer
from cxr.training.inference import Normalize
from cxr.training.models import build_model
from cxr.training.pixels import load_pixels

ARCH, SIZE = "resnet18", 48
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ARCH, 3).eval()


@pytest.fixture(scope="module")
def xrays(real_images: list[Path]) -> torch.Tensor:
    """Two real X-rays of different classes at a small size, uint8 (2, 1, S, S)."""
    return load_pixels((real_images[0], real_images[-1]), SIZE, workers=1)


@torch.no_grad()
def one_at_a_time(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """Softmax probabilities, one image per forward pass, default layout, no batching."""
    normalize = Normalize(ARCH)
    rows = [
        model(normalize(torch.from_numpy(np.ascontiguousarray(image))[None, None]))
        .float()
        .softmax(1)[0]
        .numpy()
        for image in images
    ]
    return np.stack(rows)


def test_scorer_does_not_depend_on_the_batch_size(model: nn.Module, xrays: torch.Tensor):
    images = xrays[:, 0].numpy()
    expected = one_at_a_time(model, images.astype(np.float32) / 255)
    for batch_size in (1, 2, 256):
        scored = Scorer(model, ARCH, CPU, batch_size)(xrays)
        np.testing.assert_allclose(scored, expected, rtol=1e-5, atol=1e-6)


def test_batched_lime_builds_exactly_lime_s_copies(xrays: torch.Tensor):
    from lime.lime_image import LimeImageExplainer

    image = np.stack([xrays[0, 0].numpy()] * 3, axis=-1)
    fudged = np.zeros_like(image)
    segments = np.arange(SIZE * SIZE).reshape(SIZE, SIZE) // (SIZE * SIZE // 12)  # 12 bands
    seen: dict[str, list[np.ndarray]] = {"lime": [], "batched": []}

    def recorder(name: str):
        def classify(images: np.ndarray) -> np.ndarray:
            seen[name].append(images.copy())
            return np.tile(images.mean(axis=(1, 2, 3))[:, None], (1, 3))

        return classify

    with contextlib.redirect_stderr(io.StringIO()):  # lime's own loop draws a progress bar
        data, labels = LimeImageExplainer(random_state=3).data_labels(
            image, fudged, segments, recorder("lime"), 50, batch_size=7
        )
    got_data, got_labels = batched_lime()(random_state=3).data_labels(
        image, fudged, segments, recorder("batched"), 50, batch_size=7
    )
    assert np.array_equal(got_data, data) and np.array_equal(got_labels, labels)
    assert [len(b) for b in seen["batched"]] == [len(b) for b in seen["lime"]]
    assert np.array_equal(np.concatenate(seen["batched"]), np.concatenate(seen["lime"]))


def test_lime_maps_equal_those_of_one_image_at_a_time_scoring(
    model: nn.Module, xrays: torch.Tensor
):
    from lime.lime_image import LimeImageExplainer

    targets = np.array([0, 2])
    batched = lime_maps(model, ARCH, xrays, targets, 60, 16, 5, CPU)

    def classify(images: np.ndarray) -> np.ndarray:
        return one_at_a_time(model, images[..., 0])

    with contextlib.redirect_stderr(io.StringIO()):
        reference = np.stack(
            [
                lime_map(
                    classify,
                    xrays[i, 0].numpy(),
                    int(targets[i]),
                    60,
                    16,
                    5 * 100_003 + i,
                    batch_size=1,
                    explainer_class=LimeImageExplainer,
                )
                for i in range(len(xrays))
            ]
        )
    assert batched.shape == (2, SIZE, SIZE) and np.abs(reference).max() > 0
    np.testing.assert_allclose(batched, reference, rtol=1e-4, atol=1e-6)


def test_curves_equal_those_of_one_image_at_a_time_scoring(model: nn.Module, xrays: torch.Tensor):
    steps, seed = 6, 4
    rng = np.random.default_rng(1)
    maps = {
        "smooth": np.stack([np.add.outer(np.arange(SIZE), np.arange(SIZE))] * 2).astype(np.float32),
        "noise": rng.random((2, SIZE, SIZE)).astype(np.float32),
        "ties": (rng.random((2, SIZE, SIZE)) > 0.5).astype(np.float32),
    }
    targets = np.array([1, 0])
    # every method and image in one go, 5 images per forward pass
    found = curves(model, ARCH, xrays, maps, targets, steps, seed, CPU, batch_size=5)
    for name, saliency in maps.items():
        method_rng = np.random.default_rng(seed)  # each method's tie-break stream, as before
        for i in range(len(xrays)):
            order = pixel_order(saliency[i], method_rng)
            series = perturbation_series(xrays[i, 0].numpy(), order, steps, SIZE / 20)
            for k, images in enumerate(series):
                expected = one_at_a_time(model, images.astype(np.float32))[:, targets[i]]
                np.testing.assert_allclose(found[name][k][i], expected, rtol=1e-5, atol=1e-6)
    deletion, insertion = deletion_insertion(
        model, ARCH, xrays, maps["ties"], targets, steps, seed, CPU
    )
    np.testing.assert_allclose(deletion, [area(c) for c in found["ties"][0]], atol=1e-6)
    np.testing.assert_allclose(insertion, [area(c) for c in found["ties"][1]], atol=1e-6)

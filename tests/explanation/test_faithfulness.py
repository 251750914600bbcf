"""Faithfulness (cxr.explanation.faithfulness) and LIME (cxr.explanation.lime_explain) on a
model whose decision is known to come from one quadrant, so the right answer is known in
advance; and the gradcam stage's faithfulness report and method figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxr.explanation.faithfulness import (
    SALIENCY,
    Explainers,
    area,
    deletion_insertion,
    faithfulness_report,
    perturbation_series,
    pick_images,
    score_methods,
)
from cxr.explanation.lime_explain import lime_maps


class TopLeft(nn.Module):
    """Class 0's logit is 8 x the mean brightness of the top-left quadrant, class 1's is 4:
    the evidence for class 0 lies in that quadrant only."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()  # the 'layer' Grad-CAM explains: the input itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        half = x.shape[-1] // 2
        brightness = x[:, 0, :half, :half].mean(dim=(1, 2))
        return torch.stack([8 * brightness, torch.full_like(brightness, 4.0)], 1)


SIZE = 16


def bright_images(n: int = 3) -> torch.Tensor:
    return torch.full((n, 1, SIZE, SIZE), 230, dtype=torch.uint8)


def quadrant_map() -> np.ndarray:
    saliency = np.zeros((SIZE, SIZE), np.float32)
    saliency[: SIZE // 2, : SIZE // 2] = 1.0
    return saliency


def test_area_and_perturbation_series():
    assert area(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert area(np.array([1.0, 0.0, 0.0])) == pytest.approx(0.25)  # trapezoid, not steps
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    order = np.arange(16)[::-1]  # the brightest pixel first
    deletion, insertion = perturbation_series(image, order, 4, 1.0)
    assert np.allclose(deletion[0], image / 255) and not deletion[-1].any()
    assert np.allclose(insertion[-1], image / 255)
    assert [(d == 0).sum() for d in deletion] == [1, 5, 9, 13, 16]  # pixel 0 is black already


def test_the_map_of_the_true_evidence_beats_its_inverse():
    model, pixels = TopLeft().eval(), bright_images()
    targets = np.zeros(3, dtype=int)
    cpu = torch.device("cpu")
    right = np.stack([quadrant_map()] * 3)
    wrong = 1.0 - right
    d_right, i_right = deletion_insertion(model, "resnet18", pixels, right, targets, 8, 0, cpu)
    d_wrong, i_wrong = deletion_insertion(model, "resnet18", pixels, wrong, targets, 8, 0, cpu)
    # a flat image equals its blurred copy: insertion cannot tell the maps apart here
    assert (d_right < d_wrong).all() and (i_right >= i_wrong).all()


def test_lime_finds_the_quadrant_and_is_seeded():
    model, pixels = TopLeft().eval(), bright_images(1)
    maps = lime_maps(model, "resnet18", pixels, np.array([0]), 150, 16, 0, torch.device("cpu"))
    again = lime_maps(model, "resnet18", pixels, np.array([0]), 150, 16, 0, torch.device("cpu"))
    assert maps.shape == (1, SIZE, SIZE) and np.array_equal(maps, again)
    inside = maps[0][quadrant_map() > 0]
    outside = maps[0][quadrant_map() == 0]
    # superpixels of a flat image straddle the quadrant's edge a little
    assert inside.mean() > 5 * abs(outside.mean())
    assert quadrant_map()[np.unravel_index(maps[0].argmax(), maps[0].shape)] == 1


def test_every_method_is_scored_and_random_ranks_last():
    model = TopLeft().eval()
    ctx = Explainers(model, "resnet18", model.features, torch.device("cpu"), 100, 16, 0)
    images = bright_images(4)
    images[:, :, SIZE // 2 :, :] = 40  # a structured image: not every map is flat
    maps, scores, _ = score_methods(ctx, images, SALIENCY.names(), 8)
    assert set(maps) == {"gradcam", "gradcam++", "lime", "random"}
    assert all(m.shape == (4, SIZE, SIZE) for m in maps.values())
    report = faithfulness_report(scores, resamples=50)
    assert set(report["methods"]) == {"gradcam", "gradcam_plusplus", "lime", "random"}
    assert report["ranking_by_deletion"][-1] == "random"
    assert report["methods"]["lime"]["deletion_lead_over_random"]["mean"] > 0


def test_picked_images_cover_every_class():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 5)
    chosen = pick_images(labels, 9, 0)
    assert len(chosen) == 9 and set(labels[chosen]) == {0, 1, 2}
    assert (labels[chosen] == 1).sum() == 3
    assert len(pick_images(labels, 100, 0)) == len(labels)


def test_gradcam_stage_scores_faithfulness_and_draws_the_methods(evaluated_project: Path):
    report = json.loads((evaluated_project / "reports/gradcam.json").read_text())["faithfulness"]
    assert set(report["methods"]) == {"gradcam", "gradcam_plusplus", "lime", "random"}
    assert all(entry["images"] == 6 for entry in report["methods"].values())
    for entry in report["methods"].values():
        for score in ("deletion_auc", "insertion_auc"):
            assert 0 <= entry[score]["low"] <= entry[score]["mean"] <= entry[score]["high"] <= 1
    metrics = json.loads((evaluated_project / "metrics/gradcam.json").read_text())
    assert set(metrics["faithfulness"]) == {"gradcam", "gradcam_plusplus", "lime"}
    assert list((evaluated_project / "plots/gradcam/methods").glob("*.png"))

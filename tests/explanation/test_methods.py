"""What `faithfulness.images` and `lime.images_per_class` switch: the scored images and the
method figures drawn from them (the stage's params.yaml comments say the same)."""

from __future__ import annotations

from pathlib import Path

import torch

from cxr.core.config import FaithfulnessConfig, GradcamConfig, LimeConfig
from cxr.core.progress import Stopwatch
from cxr.explanation.methods import explain_and_score
from cxr.training.pixels import PixelSet
from tests.explanation.test_faithfulness import SIZE, TopLeft, bright_images


def two_class_test_set() -> PixelSet:
    pixels = bright_images(4)
    pixels[2:, :, : SIZE // 2, : SIZE // 2] = 20  # class 1: a dark top-left quadrant
    files = tuple(Path(f"{name}/{i}.png") for i, name in enumerate("AABB"))
    return PixelSet(("A", "B"), files, pixels, torch.tensor([0, 0, 1, 1]))


def run(
    tmp_path: Path, images: int, per_class: int, watch: Stopwatch | None = None
) -> tuple[dict, list[Path]]:
    model = TopLeft().eval()
    cfg = GradcamConfig(
        lime=LimeConfig(num_samples=20, segments=4, images_per_class=per_class),
        faithfulness=FaithfulnessConfig(images=images, steps=4),
    )
    folder = tmp_path / "methods"
    report = explain_and_score(
        model, "resnet18", model.features, two_class_test_set(), cfg, torch.device("cpu"),
        folder, resamples=20, watch=watch,
    )  # fmt: skip
    return report, sorted(folder.glob("*.png")) if folder.exists() else []


def test_no_scored_images_means_no_lime_and_no_method_figures(tmp_path: Path) -> None:
    report, figures = run(tmp_path, images=0, per_class=1)
    assert report == {} and figures == []


def test_scored_images_without_figures_and_with_them(tmp_path: Path) -> None:
    report, figures = run(tmp_path / "none", images=4, per_class=0)
    assert len(report["files"]) == 4 and "lime" in report["methods"]
    assert figures == []
    report, figures = run(tmp_path / "drawn", images=4, per_class=1)
    assert len(report["files"]) == 4
    assert figures  # one grid per class and outcome drawn


def test_the_stage_is_told_what_each_part_of_the_work_cost(tmp_path: Path) -> None:
    watch = Stopwatch()
    report, _ = run(tmp_path, images=4, per_class=1, watch=watch)
    assert list(watch.parts) == [
        "LIME (4 images x 20 samples)",
        "gradcam/gradcam++/random maps",
        "faithfulness (4 images x 4 methods x 2 curves x 5 steps)",
        "method figures",
    ]
    assert all(seconds >= 0 for seconds in watch.parts.values())
    assert len(report["files"]) == 4

"""Figures for MLflow: every evaluation and Grad-CAM figure renders and saves as a PNG, and
the Grad-CAM overlays land under their class and outcome."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cxr.calibration import reliability_table
from cxr.metrics import classification_metrics, curve_frames, per_class_frame
from cxr.plots import (
    confusion_figure,
    curves_figure,
    gradcam_grid,
    per_class_figure,
    reliability_figure,
    save_figure,
    write_gradcam_overlays,
)

CLASSES = ("COVID", "Normal", "Viral Pneumonia")


def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y_true = np.repeat([0, 1, 2], 10)
    logits = rng.normal(0, 1, (30, 3))
    logits[np.arange(30), y_true] += 1.0
    return y_true, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def saved_size(figure, path: Path) -> tuple[int, int]:
    save_figure(figure, path)
    with Image.open(path) as image:
        return image.size


def test_evaluation_figures_render(tmp_path: Path):
    y_true, probabilities = predictions()
    curves = curve_frames(y_true, probabilities, CLASSES)
    assert set(curves["roc"]) == set(CLASSES) == set(curves["pr"])
    for frame in curves["roc"].values():  # a ROC curve runs from (0, 0) to (1, 1)
        assert (frame.iloc[0].tolist(), frame.iloc[-1].tolist()) == ([0, 0], [1, 1])
    report = classification_metrics(y_true, probabilities, CLASSES, resamples=0)
    per_class = per_class_frame(report)
    assert (
        per_class.loc[per_class["bar"] == "Normal f1", "value"].item()
        == (report["per_class"]["Normal"]["f1"])
    )
    figures = {
        "roc": curves_figure(curves["roc"], "fpr", "tpr", "ROC", True),
        "pr": curves_figure(curves["pr"], "recall", "precision", "PR", False),
        "reliability": reliability_figure({"raw": reliability_table(y_true, probabilities, 10)}),
        "bars": per_class_figure(per_class),
        "confusion": confusion_figure(np.array([[3, 1, 0], [0, 4, 1], [2, 0, 5]]), CLASSES),
    }
    for name, figure in figures.items():
        width, height = saved_size(figure, tmp_path / f"{name}.png")
        assert width > 200 and height > 200


def test_gradcam_grid_pairs_image_and_overlay_and_handles_no_images(tmp_path: Path):
    image = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
    cam = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    panel = {"image": image, "cam": cam, "title": "t", "mask": cam > 0.5}
    one = saved_size(gradcam_grid([panel], 0.4, "one"), tmp_path / "one.png")
    three = saved_size(gradcam_grid([panel] * 3, 0.4, "three"), tmp_path / "three.png")
    empty = saved_size(gradcam_grid([], 0.4, "none"), tmp_path / "none.png")
    assert three[1] > one[1]  # a second row of pairs
    assert empty == one


def test_gradcam_overlays_go_under_class_and_outcome_capped_per_class(tmp_path: Path):
    labels = np.array([0, 0, 0, 1, 1, 2])
    probabilities = np.eye(3)[[0, 0, 1, 1, 1, 0]]  # class 0: 2 right, 1 wrong; 2: 1 wrong
    images = np.zeros((6, 32, 32), dtype=np.uint8)
    cams = np.random.default_rng(0).random((6, 32, 32))
    files = [Path(f"split/test/{CLASSES[k]}/img{i}.png") for i, k in enumerate(labels)]
    masks = [None] * 6
    out = tmp_path / "gradcam"
    write_gradcam_overlays(out, images, files, labels, cams, probabilities, masks, CLASSES, 1, 0.4)
    overlays = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*/*.png"))
    assert overlays == [
        "COVID/correct/img0.png",  # capped at one per class and outcome
        "COVID/wrong/img2.png",
        "Normal/correct/img3.png",
        "Viral Pneumonia/wrong/img5.png",
    ]
    grids = sorted(p.name for p in out.glob("*.png"))
    assert grids == sorted(f"{name}_{o}.png" for name in CLASSES for o in ("correct", "wrong"))

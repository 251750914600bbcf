"""The evaluation's figures for MLflow: every figure renders and saves as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cxr.evaluation.calibration import reliability_table
from cxr.evaluation.figures import (
    confusion_figure,
    curves_figure,
    per_class_figure,
    reliability_figure,
)
from cxr.evaluation.metrics import classification_metrics, curve_frames, per_class_frame
from cxr.explanation.figures import save_figure

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
        "roc": curves_figure(curves["roc"], ("fpr", "FPR"), ("tpr", "TPR"), "ROC", {}, True),
        "pr": curves_figure(
            curves["pr"], ("recall", "R"), ("precision", "P"), "PR", {}, drawstyle="steps-pre"
        ),
        "reliability": reliability_figure({"raw": reliability_table(y_true, probabilities, 10)}),
        "bars": per_class_figure(per_class),
        "confusion": confusion_figure(np.array([[3, 1, 0], [0, 4, 1], [2, 0, 5]]), CLASSES),
    }
    for name, figure in figures.items():
        width, height = saved_size(figure, tmp_path / f"{name}.png")
        assert width > 200 and height > 200

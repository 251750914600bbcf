"""Matplotlib figures for MLflow and the README (DVC renders its own plots from data files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr.fsio import atomic_file

# Fixed metadata so identical figures give identical PNG bytes.
_PNG_METADATA = {"Software": None}


def save_figure(figure: Figure, path: Path, dpi: int = 100) -> None:
    with atomic_file(path) as scratch:
        figure.savefig(scratch, format="png", dpi=dpi, metadata=_PNG_METADATA)
    plt.close(figure)


def confusion_figure(counts: np.ndarray, classes: tuple[str, ...]) -> Figure:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape, float), where=rows > 0)
    for axis, matrix, title, fmt in (
        (axes[0], counts, "Counts", "{:d}"),
        (axes[1], normalised, "Normalised by true class", "{:.2f}"),
    ):
        axis.imshow(matrix, cmap="Blues")
        axis.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        axis.set_yticks(range(len(classes)), classes)
        axis.set_xlabel("Predicted")
        axis.set_ylabel("True")
        axis.set_title(title)
        high = matrix.max() if matrix.size else 0
        for (row, col), value in np.ndenumerate(matrix):
            color = "white" if high and value > high / 2 else "black"
            axis.text(col, row, fmt.format(value), ha="center", va="center", color=color)
    return figure


def history_figure(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch, train vs validation."""
    figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    loss.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    loss.plot(history["epoch"], history["val_loss"], marker="o", label="val")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    accuracy.plot(history["epoch"], history["train_accuracy"], marker="o", label="train")
    accuracy.plot(history["epoch"], history["val_accuracy"], marker="o", label="val")
    accuracy.plot(history["epoch"], history["val_macro_f1"], marker="o", label="val macro-F1")
    accuracy.set(xlabel="epoch", ylim=(0, 1.02), title="Accuracy")
    for axis in (loss, accuracy):
        axis.legend()
        axis.grid(alpha=0.3)
    return figure


def overlay_figure(
    image: np.ndarray, cam: np.ndarray, title: str, alpha: float, mask: np.ndarray | None = None
) -> Figure:
    """An X-ray with its Grad-CAM heat map; the lesion/lung mask outlined when there is one."""
    figure, axis = plt.subplots(figsize=(3.2, 3.5), layout="constrained")
    _draw_overlay(axis, image, cam, alpha, mask)
    axis.set_title(title, fontsize=8)
    return figure


def _draw_overlay(axis, image, cam, alpha, mask) -> None:
    axis.imshow(image, cmap="gray", vmin=0, vmax=255)
    axis.imshow(cam, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    if mask is not None and mask.any():
        axis.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
    axis.axis("off")


def gradcam_grid(panels: list[dict], alpha: float, columns: int = 4) -> Figure:
    """A grid of overlays; each panel is {image, cam, title, mask}."""
    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(3 * columns, 3.3 * rows), layout="constrained", squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, panel in zip(axes.flat, panels, strict=False):
        _draw_overlay(axis, panel["image"], panel["cam"], alpha, panel.get("mask"))
        axis.set_title(panel["title"], fontsize=8)
    return figure

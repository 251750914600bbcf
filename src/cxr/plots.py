"""Matplotlib figures for MLflow and the README (DVC renders its own plots from data files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr.fsio import atomic_dir, atomic_file

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


def gradcam_grid(panels: list[dict], alpha: float, title: str = "", pairs: int = 2) -> Figure:
    """A grid of (image, heat-map overlay) pairs; each panel is {image, cam, title, mask}.
    An empty list gives a figure that says so, so every class always has its grid."""
    rows = max(1, -(-len(panels) // pairs))
    figure, axes = plt.subplots(
        rows, 2 * pairs, figsize=(2.8 * 2 * pairs, 3.1 * rows), layout="constrained", squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for n, panel in enumerate(panels):
        row, col = divmod(n, pairs)
        plain, overlay = axes[row, 2 * col], axes[row, 2 * col + 1]
        plain.imshow(panel["image"], cmap="gray", vmin=0, vmax=255)
        _draw_overlay(overlay, panel["image"], panel["cam"], alpha, panel.get("mask"))
        overlay.set_title(panel["title"], fontsize=8)
    if not panels:
        axes[0, 0].text(0, 0.5, "no images", fontsize=12)
    figure.suptitle(title)
    return figure


GRADCAM_OUTCOMES = ("correct", "wrong")


def write_gradcam_overlays(
    folder: Path,
    images: np.ndarray,
    files: list[Path],
    labels: np.ndarray,
    cams: np.ndarray,
    probabilities: np.ndarray,
    masks: list[np.ndarray | None],
    classes: tuple[str, ...],
    per_class: int,
    alpha: float,
) -> None:
    """`folder`/<Class>/{correct,wrong}/<image>.png: up to `per_class` overlays of the
    predicted class's map per class and outcome, and one grid of them each
    (`folder`/<Class>_{correct,wrong}.png). `images` is (N, H, W) uint8."""
    correct = probabilities.argmax(1) == labels
    with atomic_dir(folder) as out:
        for k, name in enumerate(classes):
            for outcome, wanted in zip(GRADCAM_OUTCOMES, (True, False), strict=True):
                chosen = np.flatnonzero((labels == k) & (correct == wanted))
                panels = []
                for i in chosen[:per_class]:
                    predicted = int(probabilities[i].argmax())
                    panel = {
                        "image": images[i],
                        "cam": cams[i],
                        "mask": masks[i],
                        "title": f"{files[i].name[:28]}\ntrue {name} · pred "
                        f"{classes[predicted]} (p={probabilities[i, predicted]:.2f})",
                    }
                    panels.append(panel)
                    figure = overlay_figure(
                        panel["image"], panel["cam"], panel["title"], alpha, panel["mask"]
                    )
                    save_figure(figure, out / name / outcome / f"{files[i].stem}.png")
                title = f"{name}: {outcome}ly classified ({len(chosen)} of {(labels == k).sum()})"
                save_figure(gradcam_grid(panels, alpha, title), out / f"{name}_{outcome}.png")


def curves_figure(curves: dict, x: str, y: str, title: str, diagonal: bool) -> Figure:
    """One line per class from {class: frame}; ROC curves get the chance diagonal."""
    figure, axis = plt.subplots(figsize=(5, 4.5), layout="constrained")
    for name, frame in curves.items():
        axis.plot(frame[x], frame[y], label=name, drawstyle="steps-post")
    if diagonal:
        axis.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=0.8)
    axis.set(xlabel=x, ylabel=y, title=title, xlim=(0, 1), ylim=(0, 1.02))
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


def reliability_figure(tables: dict[str, pd.DataFrame]) -> Figure:
    """Reliability diagram: accuracy vs confidence per bin, for each set of probabilities."""
    figure, axis = plt.subplots(figsize=(5, 4.5), layout="constrained")
    axis.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=0.8, label="perfect")
    for name, table in tables.items():
        axis.plot(table["confidence"], table["accuracy"], marker="o", label=name)
    axis.set(xlabel="confidence (top class)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    axis.set_title("Reliability diagram (test split)")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


def per_class_figure(per_class: pd.DataFrame) -> Figure:
    """Grouped bars: precision, recall, F1 and specificity per class."""
    table = per_class.pivot(index="class", columns="metric", values="value")
    table = table[["precision", "recall", "f1", "specificity"]]
    figure, axis = plt.subplots(figsize=(7, 4), layout="constrained")
    table.plot.bar(ax=axis, rot=0, ylim=(0, 1.05))
    axis.set(title="Per-class metrics (test split)", xlabel="")
    axis.grid(alpha=0.3, axis="y")
    return figure

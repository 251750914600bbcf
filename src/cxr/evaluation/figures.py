"""The evaluation as matplotlib figures for MLflow (DVC draws its own plots from data files).

Figures are made as `matplotlib.figure.Figure` objects, never through pyplot: no backend is
chosen, nothing is global, and they need no closing."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def confusion_figure(counts: np.ndarray, classes: tuple[str, ...]) -> Figure:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    axes = figure.subplots(1, 2)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape, float), where=rows > 0)
    for axis, matrix, title, fmt in (
        (axes[0], counts, "Counts", "{:d}"),
        (axes[1], normalised, "Normalised by true class", "{:.2f}"),
    ):
        axis.imshow(matrix, cmap="Blues")
        axis.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        axis.set_yticks(range(len(classes)), classes)
        axis.set_xlabel("Predicted class")
        axis.set_ylabel("True class")
        axis.set_title(title)
        high = matrix.max() if matrix.size else 0
        for (row, col), value in np.ndenumerate(matrix):
            color = "white" if high and value > high / 2 else "black"
            axis.text(col, row, fmt.format(value), ha="center", va="center", color=color)
    return figure


def curves_figure(
    curves: dict,
    x: tuple[str, str],
    y: tuple[str, str],
    title: str,
    labels: dict[str, str],
    diagonal: bool = False,
    drawstyle: str = "default",
) -> Figure:
    """One line per class from {class: frame}, labelled `labels[class]`; x and y are
    (column, axis label). ROC curves join their points with straight lines (and get the chance
    diagonal); PR curves (recall ascending) are steps, the curve average precision measures."""
    figure = Figure(figsize=(6, 4.8), layout="constrained")
    axis = figure.subplots()
    for name, frame in curves.items():
        axis.plot(frame[x[0]], frame[y[0]], label=labels.get(name, name), drawstyle=drawstyle)
    if diagonal:
        axis.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=0.8, label="chance")
    axis.set(xlabel=x[1], ylabel=y[1], title=title, xlim=(0, 1), ylim=(0, 1.02))
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def reliability_figure(tables: dict[str, pd.DataFrame]) -> Figure:
    """Reliability diagram: accuracy vs mean confidence per bin for each set of probabilities,
    the diagonal of perfect calibration, and each bin's image count."""
    figure = Figure(figsize=(6, 4.8), layout="constrained")
    axis = figure.subplots()
    axis.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=0.8, label="perfect")
    for name, table in tables.items():
        (line,) = axis.plot(table["confidence"], table["accuracy"], marker="o", label=name)
        for _, row in table.iterrows():
            axis.annotate(
                f"{int(row['count'])}",
                (row["confidence"], row["accuracy"]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
                color=line.get_color(),
            )
    axis.set(
        xlabel="mean confidence of the top class (per bin)",
        ylabel="accuracy (per bin)",
        xlim=(0, 1),
        ylim=(0, 1.08),
    )
    axis.set_title("Reliability diagram (test split; numbers: images per bin)")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


def per_class_figure(per_class: pd.DataFrame) -> Figure:
    """Grouped bars: precision, recall, F1 and specificity per class."""
    table = per_class.pivot(index="class", columns="metric", values="value")
    table = table[["precision", "recall", "f1", "specificity"]]
    figure = Figure(figsize=(7, 4), layout="constrained")
    axis = figure.subplots()
    table.plot.bar(ax=axis, rot=0, ylim=(0, 1.05))
    axis.set(title="Per-class metrics (test split)", xlabel="")
    axis.grid(alpha=0.3, axis="y")
    return figure


def subgroups_figure(rows: pd.DataFrame, chance: float) -> Figure:
    """Balanced accuracy per subgroup (one panel per metadata column) with its bootstrap
    interval, the group's image count in its label, and the chance level drawn."""
    balanced = rows[rows["metric"] == "balanced_accuracy"]
    columns = list(dict.fromkeys(balanced["column"]))
    heights = [max(1, int((balanced["column"] == c).sum())) for c in columns] or [1]
    figure = Figure(figsize=(8, 1.2 + 0.35 * sum(heights)), layout="constrained")
    if not columns:
        figure.text(0.5, 0.5, "no subgroup columns in the metadata", ha="center")
        return figure
    axes = np.atleast_1d(figure.subplots(len(columns), 1, height_ratios=heights, sharex=True))
    for axis, column in zip(axes, columns, strict=True):
        part = balanced[balanced["column"] == column]
        labels = [f"{g} (n={n})" for g, n in zip(part["group"], part["images"], strict=True)]
        values = part["value"].astype(float).to_numpy()
        low = part["low"].astype(float).to_numpy()
        high = part["high"].astype(float).to_numpy()
        error = np.vstack([values - low, high - values])
        axis.barh(labels, values, xerr=np.nan_to_num(error), color="tab:blue", capsize=3)
        axis.axvline(chance, color="grey", linestyle="--", label=f"chance ({chance:.2f})")
        axis.set_title(f"by {column}", loc="left", fontsize=10)
        axis.invert_yaxis()
    axes[0].legend(loc="lower right", fontsize=8)
    axes[-1].set_xlim(0, 1)
    axes[-1].set_xlabel("balanced accuracy on the test split (95 % bootstrap interval)")
    figure.suptitle("Balanced accuracy per subgroup (test split)")
    return figure


def conformal_figure(curve: pd.DataFrame, alpha: float) -> Figure:
    """Conformal sets on test against alpha: coverage beside its target 1 − alpha (left) and
    the mean set size (right), the configured alpha marked on both."""
    figure = Figure(figsize=(9, 3.8), layout="constrained")
    coverage, size = figure.subplots(1, 2)
    coverage.plot(curve["alpha"], curve["coverage"], marker="o", markersize=3, label="test")
    coverage.plot(
        curve["alpha"], curve["target_coverage"], color="gray", linestyle="--", label="1 − alpha"
    )
    coverage.set(xlabel="alpha", ylabel="coverage (true class in the set)", ylim=(0, 1.02))
    coverage.set_title("Coverage (test split)")
    size.plot(curve["alpha"], curve["mean_set_size"], marker="o", markersize=3)
    size.set(xlabel="alpha", ylabel="mean set size (classes)", ylim=(0, None))
    size.set_title("Mean set size (test split)")
    for axis in (coverage, size):
        axis.axvline(
            alpha, color="tab:red", linewidth=0.8, linestyle=":", label=f"conformal.alpha {alpha:g}"
        )
        axis.grid(alpha=0.3)
    coverage.legend(fontsize=8)
    size.legend(fontsize=8)
    return figure

"""Scoring a trained model on the held-out test split: what the evaluate stage computes.

`evaluate_model` runs the model over the test split once and derives everything from its
probabilities, rounded exactly as plots/predictions.csv stores them (so every metric can be
recomputed from that file): classification metrics with bootstrap confidence intervals,
calibration before and after temperature scaling (the temperature fitted on the val split,
never on test), one-vs-rest ROC and PR curves, and the per-class table. `write_evaluation`
writes the stage's outputs; `evaluation_figures` draws them for MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from cxr import layout
from cxr.calibration import (
    calibration_summary,
    fit_temperature,
    reliability_table,
    scale_probabilities,
)
from cxr.config import EvaluateConfig
from cxr.data import PixelSet, load_split
from cxr.fsio import atomic_dir, write_csv, write_json
from cxr.metrics import (
    classification_metrics,
    confusion,
    curve_frames,
    per_class_frame,
    predictions_frame,
    round_probabilities,
)
from cxr.models import ModelCard
from cxr.plots import confusion_figure, curves_figure, per_class_figure, reliability_figure
from cxr.training import predict_logits


@dataclass(frozen=True)
class Evaluation:
    """The test split's predictions and everything derived from them."""

    classes: tuple[str, ...]
    files: list[str]  # test images, relative to the test split folder
    y_true: np.ndarray
    probabilities: np.ndarray  # rounded as plots/predictions.csv stores them
    report: dict  # metrics/eval.json
    reliability: dict[str, pd.DataFrame]  # uncalibrated [, temperature_scaled]
    curves: dict[str, dict[str, pd.DataFrame]]  # roc / pr → class → curve
    per_class: pd.DataFrame


def split_logits(
    model: nn.Module, card: ModelCard, folder: Path, batch_size: int, device: torch.device
) -> tuple[PixelSet, np.ndarray]:
    """A split's pixels and the model's float64 logits for it."""
    data = load_split(folder, card.image_size, card.classes)
    logits = predict_logits(model, data.pixels, batch_size, device).numpy()
    return data, logits.astype(np.float64)


def calibration(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    val_logits: np.ndarray | None,
    val_labels: np.ndarray | None,
    bins: int,
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Calibration of the test probabilities and, given val logits, after temperature scaling
    fitted on them. Returns the report section and the reliability tables."""
    section: dict = {"bins": bins}
    section["uncalibrated"] = calibration_summary(y_true, probabilities, bins)
    tables = {"uncalibrated": reliability_table(y_true, probabilities, bins)}
    if val_logits is not None and val_labels is not None:
        temperature = fit_temperature(val_logits, val_labels)
        scaled = scale_probabilities(probabilities, temperature)
        section["temperature"] = round(temperature, 6)
        section["temperature_scaled"] = calibration_summary(y_true, scaled, bins)
        tables["temperature_scaled"] = reliability_table(y_true, scaled, bins)
    return section, tables


def evaluate_model(
    model: nn.Module,
    card: ModelCard,
    split_root: Path,
    cfg: EvaluateConfig,
    device: torch.device,
) -> Evaluation:
    """Score `model` on `split_root`/test (and fit calibration on `split_root`/val)."""
    test, logits = split_logits(model, card, split_root / "test", cfg.batch_size, device)
    probabilities = round_probabilities(torch.softmax(torch.from_numpy(logits), 1).numpy())
    y_true = test.labels.numpy()
    report = classification_metrics(
        y_true, probabilities, card.classes, cfg.bootstrap_resamples, cfg.confidence, cfg.seed
    )
    val_logits = val_labels = None
    if cfg.temperature_scaling:
        val, val_logits = split_logits(model, card, split_root / "val", cfg.batch_size, device)
        val_labels = val.labels.numpy()
    report["calibration"], reliability = calibration(
        y_true, probabilities, val_logits, val_labels, cfg.calibration_bins
    )
    return Evaluation(
        classes=card.classes,
        files=[path.relative_to(split_root / "test").as_posix() for path in test.files],
        y_true=y_true,
        probabilities=probabilities,
        report=report,
        reliability=reliability,
        curves=curve_frames(y_true, probabilities, card.classes),
        per_class=per_class_frame(report),
    )


def write_evaluation(result: Evaluation) -> None:
    """metrics/eval.json and the DVC plot files: predictions, roc/, pr/ (one file, so one
    plot, per class), reliability/ and the per-class table."""
    write_json(layout.EVAL_METRICS, result.report)
    write_csv(
        layout.PREDICTIONS,
        predictions_frame(result.files, result.y_true, result.probabilities, result.classes),
    )
    for kind, folder in (("roc", layout.ROC_DIR), ("pr", layout.PR_DIR)):
        with atomic_dir(folder) as out:
            for name, frame in result.curves[kind].items():
                write_csv(out / f"{name}.csv", frame)
    with atomic_dir(layout.RELIABILITY_DIR) as out:
        for name, table in result.reliability.items():
            write_csv(out / f"{name}.csv", table.round(6))
    write_csv(layout.PER_CLASS, result.per_class)


def evaluation_figures(result: Evaluation) -> dict[str, Figure]:
    """The evaluation as figures, by artifact file name."""
    counts = confusion(result.y_true, result.probabilities.argmax(1), len(result.classes))
    roc, pr = result.curves["roc"], result.curves["pr"]
    return {
        "confusion_matrix.png": confusion_figure(counts, result.classes),
        "roc.png": curves_figure(roc, "fpr", "tpr", "ROC, one vs rest (test)", True),
        "precision_recall.png": curves_figure(
            pr, "recall", "precision", "Precision-recall (test)", False
        ),
        "reliability.png": reliability_figure(result.reliability),
        "per_class.png": per_class_figure(result.per_class),
    }


def _bound(value: float | None) -> float:
    """A confidence bound for printing: nan only when there is none (0.0 is a bound)."""
    return float("nan") if value is None else value


def summary_line(result: Evaluation) -> str:
    """One line for the console: accuracy with its interval, macro-F1, calibration."""
    report = result.report
    ci, cal = report["accuracy_ci"], report["calibration"]
    after = cal.get("temperature_scaled", {}).get("ece")
    return (
        f"evaluate: test accuracy {report['accuracy']:.3f} "
        f"[{_bound(ci.get('low')):.3f}, {_bound(ci.get('high')):.3f}], "
        f"macro-F1 {report['macro']['f1']:.3f}, ECE {cal['uncalibrated']['ece']:.3f}"
        + (f" → {after:.3f} (T={cal['temperature']:.2f})" if after is not None else "")
        + f" on {len(result.y_true)} images"
    )

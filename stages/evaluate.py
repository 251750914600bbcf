"""Stage `evaluate`: score the trained model on the held-out test split.

Writes metrics/eval.json (classification metrics with bootstrap confidence intervals and
calibration, before and after temperature scaling fitted on the val split), and the DVC plot
data: plots/predictions.csv (from which every metric can be recomputed; confusion matrices),
plots/roc/, plots/pr/ (one curve per class), plots/reliability/ and plots/per_class.csv.
The same plots go to the MLflow run as figures.
"""

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxr import layout
from cxr.calibration import (
    calibration_summary,
    fit_temperature,
    reliability_table,
    scale_probabilities,
)
from cxr.config import EvaluateConfig, load_params
from cxr.data import PixelSet, load_split
from cxr.errors import run_stage
from cxr.fsio import atomic_dir, write_csv, write_json
from cxr.metrics import (
    classification_metrics,
    confusion,
    curve_frames,
    per_class_frame,
    predictions_frame,
    round_probabilities,
)
from cxr.models import ModelCard, load_checkpoint
from cxr.plots import confusion_figure, curves_figure, per_class_figure, reliability_figure
from cxr.tracking import pipeline_run
from cxr.training import predict_logits, select_device


def split_logits(
    model: nn.Module, card: ModelCard, split: str, cfg: EvaluateConfig, device: torch.device
) -> tuple[PixelSet, np.ndarray]:
    """A split's pixels and the model's float64 logits for it."""
    data = load_split(layout.SPLIT / split, card.image_size, card.classes)
    logits = predict_logits(model, data.pixels, cfg.batch_size, device).numpy()
    return data, logits.astype(np.float64)


def calibration(
    model: nn.Module,
    card: ModelCard,
    cfg: EvaluateConfig,
    device: torch.device,
    y_true: np.ndarray,
    probabilities: np.ndarray,
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Calibration of the test probabilities; with temperature scaling also after it (T fitted
    on the val split only). Returns the report section and the reliability tables."""
    section = {"bins": cfg.calibration_bins}
    section["uncalibrated"] = calibration_summary(y_true, probabilities, cfg.calibration_bins)
    tables = {"uncalibrated": reliability_table(y_true, probabilities, cfg.calibration_bins)}
    if cfg.temperature_scaling:
        val, val_logits = split_logits(model, card, "val", cfg, device)
        temperature = fit_temperature(val_logits, val.labels.numpy())
        scaled = scale_probabilities(probabilities, temperature)
        section["temperature"] = round(temperature, 6)
        section["temperature_scaled"] = calibration_summary(y_true, scaled, cfg.calibration_bins)
        tables["temperature_scaled"] = reliability_table(y_true, scaled, cfg.calibration_bins)
    return section, tables


def write_curves(curves: dict[str, dict[str, pd.DataFrame]]) -> None:
    """plots/roc/<Class>.csv and plots/pr/<Class>.csv: one file, so one DVC plot, per class."""
    for kind, folder in (("roc", layout.ROC_DIR), ("pr", layout.PR_DIR)):
        with atomic_dir(folder) as out:
            for name, frame in curves[kind].items():
                write_csv(out / f"{name}.csv", frame)


def main() -> None:
    params = load_params()
    cfg = params.evaluate
    with pipeline_run("evaluate", params) as run:
        device = select_device("auto")
        model, card = load_checkpoint(layout.MODEL, device)
        test, logits = split_logits(model, card, "test", cfg, device)
        # Metrics are computed from the probabilities exactly as the predictions file holds them.
        probabilities = round_probabilities(torch.softmax(torch.from_numpy(logits), 1).numpy())
        y_true = test.labels.numpy()
        report = classification_metrics(
            y_true, probabilities, card.classes, cfg.bootstrap_resamples, cfg.confidence, cfg.seed
        )
        report["calibration"], tables = calibration(model, card, cfg, device, y_true, probabilities)
        write_json(layout.EVAL_METRICS, report)

        files = [path.relative_to(layout.SPLIT / "test").as_posix() for path in test.files]
        write_csv(layout.PREDICTIONS, predictions_frame(files, y_true, probabilities, card.classes))
        curves = curve_frames(y_true, probabilities, card.classes)
        write_curves(curves)
        with atomic_dir(layout.RELIABILITY_DIR) as out:
            for name, table in tables.items():
                write_csv(out / f"{name}.csv", table.round(6))
        per_class = per_class_frame(report)
        write_csv(layout.PER_CLASS, per_class)

        run.log_metrics_file(layout.EVAL_METRICS, "eval")
        run.log_artifact(layout.PREDICTIONS, "evaluation")
        for folder in (layout.ROC_DIR, layout.PR_DIR, layout.RELIABILITY_DIR):
            run.log_artifacts(folder, f"evaluation/{folder.name}")
        counts = confusion(y_true, probabilities.argmax(1), len(card.classes))
        run.log_figure(confusion_figure(counts, card.classes), "plots/confusion_matrix.png")
        run.log_figure(
            curves_figure(curves["roc"], "fpr", "tpr", "ROC, one vs rest (test)", True),
            "plots/roc.png",
        )
        run.log_figure(
            curves_figure(curves["pr"], "recall", "precision", "Precision-recall (test)", False),
            "plots/precision_recall.png",
        )
        run.log_figure(reliability_figure(tables), "plots/reliability.png")
        run.log_figure(per_class_figure(per_class), "plots/per_class.png")
        print_summary(report, len(test))


def print_summary(report: dict, n: int) -> None:
    ci = report["accuracy_ci"]
    cal = report["calibration"]
    after = cal.get("temperature_scaled", {}).get("ece")
    print(
        f"evaluate: test accuracy {report['accuracy']:.3f} "
        f"[{ci.get('low') or float('nan'):.3f}, {ci.get('high') or float('nan'):.3f}], "
        f"macro-F1 {report['macro']['f1']:.3f}, ECE {cal['uncalibrated']['ece']:.3f}"
        + (f" → {after:.3f} (T={cal['temperature']:.2f})" if after is not None else "")
        + f" on {n} images"
    )


if __name__ == "__main__":
    run_stage(main)

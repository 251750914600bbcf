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

from cxr.core import layout
from cxr.core.config import EvaluateConfig
from cxr.core.fsio import write_csv, write_json
from cxr.data.metadata import metadata_for, patient_groups
from cxr.evaluation.calibration import (
    calibration_summary,
    fit_temperature,
    reliability_table,
    scale_probabilities,
)
from cxr.evaluation.dvc_plots import curve_labels, curves_table, reliability_long
from cxr.evaluation.figures import (
    confusion_figure,
    curves_figure,
    per_class_figure,
    reliability_figure,
    subgroups_figure,
)
from cxr.evaluation.metrics import (
    baseline_report,
    classification_metrics,
    curve_frames,
    per_class_frame,
    predictions_frame,
    round_probabilities,
)
from cxr.evaluation.subgroups import (
    CONFOUNDED_SHARE,
    acquisition_features,
    confounding,
    source_only_probabilities,
    subgroup_report,
    subgroup_rows,
)
from cxr.training.checkpoint import ModelCard
from cxr.training.inference import predict_logits
from cxr.training.pixels import FolderIndex, PixelSet, index_folder, load_split
from cxr.training.scores import confusion_counts


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
    subgroups: pd.DataFrame  # plots/subgroups.csv: column, group, metric, value, interval
    patients: np.ndarray  # each test image's patient (its own where none is named)


def split_logits(
    model: nn.Module, card: ModelCard, folder: Path, batch_size: int, device: torch.device
) -> tuple[PixelSet, np.ndarray]:
    """A split's pixels and the model's float64 logits for it."""
    data = load_split(folder, card.image_size, card.classes, card.prep)
    logits = predict_logits(model, card.arch, data.pixels, batch_size, device).numpy()
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


def baselines_and_groups(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    test_metadata: pd.DataFrame,
    train: FolderIndex,
    train_metadata: pd.DataFrame,
    cfg: EvaluateConfig,
    patients: np.ndarray,
) -> dict:
    """The baselines (majority, stratified and, where the metadata names sources, source-only),
    the results per subgroup, and how far each class comes from one source; intervals
    resample `patients` (one label per test image: cxr.data.metadata.patient_groups).

    The baselines know the train split only (its class shares; its sources and views), never
    the test labels."""
    classes, train_labels = train.classes, np.array(train.labels)
    others = {}
    seen, asked = acquisition_features(train_metadata), acquisition_features(test_metadata)
    if seen is not None and asked is not None:
        others["source_only"] = source_only_probabilities(
            seen, train_labels, asked[seen.columns], len(classes)
        )
    boot = (cfg.bootstrap_resamples, cfg.confidence, cfg.seed)
    sections = {
        "baselines": baseline_report(
            y_true, probabilities, train_labels, classes, *boot, others=others, groups=patients
        ),
        "subgroups": subgroup_report(
            y_true,
            probabilities,
            test_metadata,
            classes,
            cfg.subgroups,
            cfg.age_bands,
            *boot,
            patients,
        ),
    }
    if seen is not None:
        sections["confounding"] = confounding(
            train_labels, seen["source"], classes, CONFOUNDED_SHARE
        )
    return sections


def evaluate_model(
    model: nn.Module,
    card: ModelCard,
    split_root: Path,
    cfg: EvaluateConfig,
    device: torch.device,
    metadata: pd.DataFrame,
    group_by: str,
) -> Evaluation:
    """Score `model` on `split_root`/test (and fit calibration on `split_root`/val);
    `metadata` (cxr.data.metadata.read_metadata) names each image's source, sex, age, view
    and, in column `group_by`, its patient, whose images the intervals resample together."""
    test, logits = split_logits(model, card, split_root / "test", cfg.batch_size, device)
    probabilities = round_probabilities(torch.softmax(torch.from_numpy(logits), 1).numpy())
    y_true = test.labels.numpy()
    test_metadata = metadata_for(test.files, metadata)
    patients = patient_groups(test_metadata, group_by)
    boot = (cfg.bootstrap_resamples, cfg.confidence, cfg.seed, patients)
    report = classification_metrics(y_true, probabilities, card.classes, *boot)
    train = index_folder(split_root / "train", card.classes)
    report.update(
        baselines_and_groups(
            y_true,
            probabilities,
            test_metadata,
            train,
            metadata_for(train.files, metadata),
            cfg,
            patients,
        )
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
        subgroups=subgroup_rows(report["subgroups"]),
        patients=patients,
    )


def headline(report: dict) -> dict:
    """metrics/eval.json: the test numbers `dvc exp show` and `dvc metrics diff` list (the
    full report is reports/eval.json, intervals of accuracy and macro-F1 and Cohen's kappa
    included, and the calibration after temperature scaling). Few enough that
    `dvc exp show --only-changed` fits in 40 columns."""
    return {
        "accuracy": report["accuracy"],
        "balanced_accuracy": report["balanced_accuracy"],
        "balanced_accuracy_ci": _interval(report["balanced_accuracy_ci"]),
        # what a constant answer scores, and the model's lead over it (paired bootstrap)
        "majority_balanced_accuracy": report["baselines"]["majority"]["balanced_accuracy"],
        "minus_majority_balanced_accuracy": _interval_with(
            report["baselines"]["model_minus_majority"]["balanced_accuracy"]
        ),
        "macro_f1": report["macro"]["f1"],
        "macro_roc_auc": report["macro"]["roc_auc"],
        "ece": report["calibration"]["uncalibrated"]["ece"],
        # what the source and view alone give (data whose classes come from different
        # hospitals): the model's lead over it is what the pixels add
        **source_only_headline(report["baselines"]),
    }


def source_only_headline(baselines: dict) -> dict:
    """The source-only baseline's balanced accuracy and the model's lead over it, where the
    metadata names sources."""
    if "source_only" not in baselines:
        return {}
    return {
        "source_only_balanced_accuracy": baselines["source_only"]["balanced_accuracy"],
        "minus_source_only_balanced_accuracy": _interval_with(
            baselines["model_minus_source_only"]["balanced_accuracy"]
        ),
    }


def _interval(ci: dict) -> dict:
    return {"low": ci.get("low"), "high": ci.get("high")}


def _interval_with(difference: dict) -> dict:
    return {"value": difference["difference"], **_interval(difference)}


def write_evaluation(result: Evaluation) -> None:
    """reports/eval.json (everything), metrics/eval.json (the headline) and the DVC plot
    files: predictions (confusion matrices), one ROC, PR and reliability table each, and the
    per-class table."""
    write_json(layout.EVAL_REPORT, result.report)
    write_json(layout.EVAL_METRICS, headline(result.report))
    write_csv(
        layout.PREDICTIONS,
        predictions_frame(
            result.files, result.y_true, result.probabilities, result.classes, result.patients
        ),
    )
    per_class = result.report["per_class"]
    write_csv(layout.ROC, curves_table(result.curves["roc"], per_class, "roc"))
    write_csv(layout.PR, curves_table(result.curves["pr"], per_class, "pr"))
    temperature = result.report["calibration"].get("temperature")
    write_csv(layout.RELIABILITY, reliability_long(result.reliability, temperature).round(6))
    write_csv(layout.PER_CLASS, result.per_class)
    write_csv(layout.SUBGROUPS, result.subgroups)


def evaluation_figures(result: Evaluation) -> dict[str, Figure]:
    """The evaluation as figures, by artifact file name."""
    counts = confusion_counts(result.y_true, result.probabilities.argmax(1), len(result.classes))
    per_class = result.report["per_class"]
    roc, pr = result.curves["roc"], result.curves["pr"]
    return {
        "confusion_matrix.png": confusion_figure(counts, result.classes),
        "roc.png": curves_figure(
            roc,
            ("fpr", "False positive rate (1 − specificity)"),
            ("tpr", "True positive rate (sensitivity)"),
            "ROC, one class vs the rest (test split)",
            curve_labels(per_class, roc, "roc"),
            diagonal=True,
        ),
        "precision_recall.png": curves_figure(
            pr,
            ("recall", "Recall (sensitivity)"),
            ("precision", "Precision (positive predictive value)"),
            "Precision-recall, one class vs the rest (test split)",
            curve_labels(per_class, pr, "pr"),
            drawstyle="steps-pre",
        ),
        "reliability.png": reliability_figure(result.reliability),
        "per_class.png": per_class_figure(result.per_class),
        "subgroups.png": subgroups_figure(result.subgroups, 1.0 / len(result.classes)),
    }


def _bracket(ci: dict) -> str:
    low, high = ci.get("low"), ci.get("high")
    return "" if low is None or high is None else f" [{low:.3f}, {high:.3f}]"


def summary_line(result: Evaluation) -> str:
    """One line for the console: accuracy and balanced accuracy with their intervals,
    macro-F1, calibration."""
    report = result.report
    cal = report["calibration"]
    after = cal.get("temperature_scaled", {}).get("ece")
    return (
        f"evaluate: test accuracy {report['accuracy']:.3f}{_bracket(report['accuracy_ci'])}, "
        f"balanced accuracy {report['balanced_accuracy']:.3f}"
        f"{_bracket(report['balanced_accuracy_ci'])}, "
        f"macro-F1 {report['macro']['f1']:.3f}, ECE {cal['uncalibrated']['ece']:.3f}"
        + (f" → {after:.3f} (T={cal['temperature']:.2f})" if after is not None else "")
        + f" on {len(result.y_true)} images{_patients(report)}"
    )


def calibration_line(report: dict) -> str | None:
    """A warning when the temperature fitted on val makes the test split's probabilities worse
    by the NLL it minimises: val's confidence does not carry to test (a model right more often
    on val than on test gets sharpened, T < 1), and the defer stage's calibrated confidences
    (deferral.calibrated) carry the same error."""
    cal = report["calibration"]
    before, after = cal["uncalibrated"], cal.get("temperature_scaled")
    if after is None or after["nll"] <= before["nll"]:
        return None
    return (
        f"WARNING: evaluate: temperature scaling fitted on val made the test split's "
        f"calibration worse (T={cal['temperature']:.2f}: NLL {before['nll']:.3f} → "
        f"{after['nll']:.3f}, ECE {before['ece']:.3f} → {after['ece']:.3f}): val's confidence "
        f"does not carry to test, nor do the defer stage's calibrated thresholds "
        f"(deferral.calibrated)"
    )


def _patients(report: dict) -> str:
    """How many patients the intervals resampled, when fewer than the images."""
    units = report.get("bootstrap_units")
    return f" of {units} patients" if units is not None and units < report["test_images"] else ""


VERDICTS = {
    "beats": "beats",
    "inconclusive": "is NOT shown to beat",
    "loses": "does NOT beat",
}


def baseline_line(report: dict) -> str:
    """Whether the model beats always answering the train split's largest class, judged by
    balanced accuracy (plain accuracy rewards a constant on imbalanced data)."""
    majority = report["baselines"]["majority"]
    difference = report["baselines"]["model_minus_majority"]["balanced_accuracy"]
    verdict = report["baselines"]["model_minus_majority"]["verdict"]
    line = (
        f"evaluate: the model {VERDICTS[verdict]} the majority baseline (always "
        f"{majority['class']}): balanced accuracy {report['balanced_accuracy']:.3f} vs "
        f"{majority['balanced_accuracy']:.3f}, difference {difference['difference']:+.3f}"
        f"{_bracket(difference)}; accuracy {report['accuracy']:.3f} vs "
        f"{majority['accuracy']:.3f}"
    )
    return line if verdict == "beats" else "WARNING: " + line


def source_only_line(report: dict) -> str | None:
    """Whether the pixels add anything to what the image's source and view already say."""
    baselines = report["baselines"]
    if "source_only" not in baselines:
        return None
    difference = baselines["model_minus_source_only"]["balanced_accuracy"]
    verdict = baselines["model_minus_source_only"]["verdict"]
    line = (
        f"evaluate: the model {VERDICTS[verdict]} the source-only baseline (source and view, "
        f"no pixels): balanced accuracy {report['balanced_accuracy']:.3f} vs "
        f"{baselines['source_only']['balanced_accuracy']:.3f}, difference "
        f"{difference['difference']:+.3f}{_bracket(difference)}"
    )
    return line if verdict == "beats" else "WARNING: " + line

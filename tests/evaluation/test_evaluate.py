"""The evaluate stage's logic (cxr.evaluation.evaluate) and the evaluate and gradcam stages run
in a project copy (its embed and defer stages: test_embeddings.py, test_deferral.py): every
metric they report recomputes from the predictions file, every declared plot renders,
calibration never touches the test split."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.core.config import EvaluateConfig
from cxr.data.metadata import read_metadata
from cxr.evaluation import evaluate as evaluation
from cxr.evaluation.calibration import calibration_summary, scale_probabilities
from cxr.evaluation.evaluate import (
    Evaluation,
    calibration_line,
    evaluate_model,
    evaluation_figures,
    summary_line,
)
from cxr.evaluation.metrics import metrics_from_predictions, read_predictions
from cxr.training.checkpoint import ModelCard
from cxr.training.models import build_model
from tests.helpers.project import EVAL_CLASSES as CLASSES
from tests.helpers.project import make_split_folders


def test_evaluate_stage_outputs_recompute_from_predictions_file(evaluated_project: Path):
    root = evaluated_project
    report = json.loads((root / "reports/eval.json").read_text())
    frame = pd.read_csv(root / "plots/predictions.csv")
    assert len(frame) == report["test_images"] == 18
    recomputed = metrics_from_predictions(frame, 50, 0.95, 0)
    derived = ("calibration", "baselines", "subgroups", "confounding")  # need more than the file
    assert recomputed == {k: v for k, v in report.items() if k not in derived}
    y_true, probabilities, _ = read_predictions(frame)
    # ... and against independent computations: scikit-learn, and ECE counted bin by bin
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        f1_score,
        log_loss,
    )

    predicted = probabilities.argmax(1)
    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, predicted), abs=1e-6)
    assert report["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y_true, predicted), abs=1e-6
    )
    assert report["macro"]["f1"] == pytest.approx(
        f1_score(y_true, predicted, average="macro", zero_division=0), abs=1e-6
    )
    assert report["cohen_kappa"] == pytest.approx(cohen_kappa_score(y_true, predicted), abs=1e-6)
    calibration = report["calibration"]
    uncalibrated = calibration["uncalibrated"]
    assert uncalibrated["ece"] == pytest.approx(brute_ece(y_true, probabilities, 15), abs=1e-6)
    assert uncalibrated["nll"] == pytest.approx(
        log_loss(y_true, probabilities, labels=list(range(len(CLASSES)))), abs=1e-5
    )
    assert calibration_summary(y_true, probabilities, 15) == uncalibrated
    scaled = scale_probabilities(probabilities, calibration["temperature"])
    after = calibration_summary(y_true, scaled, 15)
    assert after == pytest.approx(calibration["temperature_scaled"], abs=2e-6)
    # The DVC metric is the headline of that report, nothing else.
    headline = json.loads((root / "metrics/eval.json").read_text())
    assert headline == evaluation.headline(report)
    assert headline["macro_f1"] == report["macro"]["f1"]
    # One file per chart: every class's curve in it, labelled with the class and its area.
    roc = pd.read_csv(root / "plots/roc.csv")
    assert sorted(roc["class"].unique()) == list(CLASSES)
    covid = roc[roc["class"] == "COVID"]
    auc = report["per_class"]["COVID"]["roc_auc"]
    assert set(covid["curve"]) == {f"COVID · AUC {auc:.3f}"}
    assert covid["point"].tolist() == list(range(len(covid)))
    pr = pd.read_csv(root / "plots/precision_recall.csv")
    assert pr["curve"].str.contains(" · AP ").all()
    reliability = pd.read_csv(root / "plots/reliability.csv")
    kinds = sorted(reliability["probabilities"].unique())
    assert kinds[1] == "uncalibrated" and kinds[0].startswith("temperature-scaled (T = ")
    assert reliability.groupby("probabilities")["count"].sum().tolist() == [18, 18]
    per_class = pd.read_csv(root / "plots/per_class.csv")
    assert len(per_class) == 3 * 4


def test_gradcam_stage_writes_grids_and_localisation(evaluated_project: Path):
    root = evaluated_project
    report = json.loads((root / "reports/gradcam.json").read_text())
    assert report["layer"] == "layer2"  # 32 px: layer2 is 4x4, the largest resnet18 map
    assert report["images_with_masks"] == 12  # Normal phantoms have empty masks
    assert set(report["per_class"]) == {"COVID", "Viral Pneumonia"}
    metrics = json.loads((root / "metrics/gradcam.json").read_text())
    assert {k: v for k, v in metrics.items() if k != "faithfulness"} == report["overall"]
    predictions = pd.read_csv(root / "plots/predictions.csv")
    right = predictions["actual"] == predictions["predicted"]
    # A grid for each class and outcome that has images, and none for an empty outcome.
    expected = {
        f"{name}_{outcome}.png"
        for name in CLASSES
        for outcome, wanted in (("correct", True), ("wrong", False))
        if ((predictions["actual"] == name) & (right == wanted)).any()
    }
    assert {p.name for p in (root / "plots/gradcam/grids").iterdir()} == expected
    overlays = list((root / "plots/gradcam/overlays").glob("*/*/*.png"))
    assert 0 < len(overlays) <= 2 * len(CLASSES) * 3  # images_per_class: 3


def test_evaluate_model_without_temperature_scaling_never_reads_val(tmp_path: Path):
    make_split_folders(tmp_path, size=64, per_class=4)
    shutil.rmtree(tmp_path / "data/split/val")  # would fail to load if it were read
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES))
    card = ModelCard("resnet18", CLASSES, image_size=32, weights="none", epoch=1)
    cfg = EvaluateConfig(bootstrap_resamples=20, temperature_scaling=False)
    metadata = read_metadata(tmp_path / "data/metadata.csv")
    split = tmp_path / "data/split"
    result = evaluate_model(model, card, split, cfg, torch.device("cpu"), metadata, "patient")
    assert set(result.reliability) == {"uncalibrated"}
    assert "temperature" not in result.report["calibration"]
    assert result.files == sorted(result.files) and len(result.files) == 12
    assert result.files[0] == "COVID/test-0.png"
    assert np.allclose(result.probabilities.sum(1), 1, atol=1e-5)
    assert result.report["test_images"] == 12
    assert "on 12 images" in summary_line(result)
    assert result.report["bootstrap_units"] == 12  # no patient column: each image alone
    figures = evaluation_figures(result)
    assert set(figures) == {
        "confusion_matrix.png",
        "roc.png",
        "precision_recall.png",
        "reliability.png",
        "per_class.png",
        "subgroups.png",
    }
    assert all(figure.axes for figure in figures.values())
    # the metadata's columns became subgroups; the one it lacks is listed, not invented
    subgroups = result.report["subgroups"]
    assert subgroups["skipped"] == ["view"]
    assert set(subgroups["source"]) == {"site-a", "site-b", "site-c"}
    assert sum(g["images"] for g in subgroups["age"].values()) == 12
    assert result.report["confounding"]["confounded"] == [CLASSES[0]]  # all from site-a


def brute_ece(y: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Expected calibration error: |accuracy - mean confidence| per equal-width confidence bin,
    weighted by the bin's share of images (bins closed on the right, the first on both)."""
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == y
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence > low) & (confidence <= high) if b else confidence <= high
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def expected_verdict(difference: dict) -> str:
    """The rule of docs/methods.md (Baselines): beats when the interval of model minus baseline
    lies above 0, loses when the difference is not above 0, else inconclusive."""
    if difference["difference"] <= 0:
        return "loses"
    return "beats" if difference["low"] > 0 else "inconclusive"


def test_subgroups_and_source_only_baseline_recomputed_from_the_saved_files(
    evaluated_project: Path,
) -> None:
    """reports/eval.json's per-source results, recomputed with scikit-learn from
    plots/predictions.csv and data/metadata.csv; the source-only baseline is there, judged,
    and printed."""
    from sklearn.metrics import balanced_accuracy_score

    report = json.loads((evaluated_project / "reports/eval.json").read_text())
    y, probabilities, _ = read_predictions(pd.read_csv(evaluated_project / "plots/predictions.csv"))
    predictions = pd.read_csv(evaluated_project / "plots/predictions.csv")
    metadata = pd.read_csv(evaluated_project / "data/metadata.csv").set_index("file")
    sources = metadata.loc[predictions["image"], "source"].to_numpy()
    for source, entry in report["subgroups"]["source"].items():
        rows = sources == source
        assert entry["images"] == rows.sum()
        assert entry["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(y[rows], probabilities[rows].argmax(1)), abs=1e-6
        )
    only = report["baselines"]["model_minus_source_only"]
    assert only["verdict"] == expected_verdict(only["balanced_accuracy"])
    assert only["balanced_accuracy"]["difference"] == pytest.approx(
        report["balanced_accuracy"] - report["baselines"]["source_only"]["balanced_accuracy"],
        abs=1e-5,
    )
    log = (evaluated_project / "evaluate.log").read_text()
    assert "source-only baseline" in log
    assert "class and source are confounded" in log and f"100% of {CLASSES[0]}" in log
    rows = pd.read_csv(evaluated_project / "plots/subgroups.csv")
    assert set(rows["column"]) == {"source", "sex", "age"}


def test_evaluation_reports_and_prints_the_majority_baseline(evaluated_project: Path) -> None:
    report = json.loads((evaluated_project / "reports/eval.json").read_text())
    baselines = report["baselines"]
    assert baselines["majority"]["class"] == CLASSES[0]  # the train split's largest class
    assert baselines["majority"]["accuracy"] == pytest.approx(1 / len(CLASSES), abs=1e-6)
    verdict = baselines["model_minus_majority"]["verdict"]
    assert verdict == expected_verdict(baselines["model_minus_majority"]["balanced_accuracy"])
    line = next(
        x for x in (evaluated_project / "evaluate.log").read_text().splitlines() if "baseline" in x
    )
    assert f"always {CLASSES[0]}" in line
    assert line.startswith("WARNING") == (verdict != "beats")  # an untrained model is flagged


def test_summary_line_prints_a_zero_bound_as_zero() -> None:
    # issue 16, case 11: `low or nan` printed a 0.0 lower bound as nan.
    report = {
        "accuracy": 0.1,
        "accuracy_ci": {"low": 0.0, "high": 0.25},
        "balanced_accuracy": 0.3,
        "balanced_accuracy_ci": {"low": 0.0, "high": 0.5},
        "macro": {"f1": 0.1},
        "calibration": {"uncalibrated": {"ece": 0.2}},
    }
    result = Evaluation(
        CLASSES,
        [],
        np.zeros(4),
        np.zeros((4, 3)),
        report,
        {},
        {},
        pd.DataFrame(),
        pd.DataFrame(),
        np.arange(4),
    )
    assert "test accuracy 0.100 [0.000, 0.250]" in summary_line(result)
    assert "balanced accuracy 0.300 [0.000, 0.500]" in summary_line(result)
    no_interval = {**report, "accuracy_ci": {}}  # no resamples: no interval, and no nan
    line = summary_line(dataclasses.replace(result, report=no_interval))
    assert "test accuracy 0.100, balanced" in line and "nan" not in line


def test_a_temperature_that_worsens_the_test_nll_is_a_warning() -> None:
    # right on val, less often right on test: val's fit sharpens (T < 1), test gets worse
    rng = np.random.default_rng(0)
    val_labels = np.repeat(np.arange(3), 40)
    val_logits = np.eye(3)[val_labels] * 2.0 + rng.normal(0, 0.3, (120, 3))
    y_true = np.repeat(np.arange(3), 40)
    predicted = np.where(rng.random(120) < 0.55, y_true, (y_true + 1) % 3)
    test_logits = np.eye(3)[predicted] * 2.0 + rng.normal(0, 0.3, (120, 3))
    probabilities = torch.softmax(torch.from_numpy(test_logits), 1).numpy()
    section, _ = evaluation.calibration(y_true, probabilities, val_logits, val_labels, 10)
    assert section["temperature"] < 1
    line = calibration_line({"calibration": section})
    before, after = section["uncalibrated"]["nll"], section["temperature_scaled"]["nll"]
    assert after > before and line is not None
    assert line.startswith("WARNING: evaluate: temperature scaling fitted on val made")
    assert f"NLL {before:.3f} → {after:.3f}" in line
    # the same model, as right on test as on val: scaling helps, nothing to warn of
    section, _ = evaluation.calibration(y_true, softmax(val_logits), val_logits, val_labels, 10)
    assert section["temperature_scaled"]["nll"] <= section["uncalibrated"]["nll"]
    assert calibration_line({"calibration": section}) is None
    assert calibration_line({"calibration": {"uncalibrated": section["uncalibrated"]}}) is None


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), 1).numpy()

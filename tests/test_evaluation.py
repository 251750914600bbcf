"""The evaluate stage's logic (cxr.evaluation) and the evaluate and gradcam stages run in a
project copy: every metric they report recomputes from the predictions file, every declared
plot renders, calibration never touches the test split."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import copy_project, run

from cxr.calibration import calibration_summary, scale_probabilities
from cxr.config import EvaluateConfig
from cxr.evaluation import Evaluation, evaluate_model, evaluation_figures, summary_line
from cxr.metrics import metrics_from_predictions, read_predictions
from cxr.models import ModelCard, build_model, save_checkpoint

CLASSES = ("COVID", "Normal", "Viral Pneumonia")


def make_split_folders(root: Path, size: int, per_class: int) -> None:
    """Synthetic phantoms + lesion masks in the layout the stages read."""
    from cxr.images import save_png
    from cxr.synthetic import draw_phantom

    for split_index, split in enumerate(("val", "test")):
        for class_index, name in enumerate(CLASSES):
            for n in range(per_class):
                seed = 1000 * split_index + 100 * class_index + n
                image, mask = draw_phantom(name, size, seed)
                for folder, picture in (
                    (root / "data/split" / split, image),
                    (root / "data/masks", mask),
                ):
                    (folder / name).mkdir(parents=True, exist_ok=True)
                    save_png(picture, folder / name / f"{split}-{n}.png")


@pytest.fixture(scope="module")
def evaluated_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with tiny val/test splits, an untrained checkpoint, and the evaluate
    and gradcam stages run in it (real MLflow SQLite store in the copy)."""
    project_copy = copy_project(tmp_path_factory.mktemp("evaluated"))
    make_split_folders(project_copy, size=64, per_class=6)
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES))
    card = ModelCard("resnet18", CLASSES, image_size=32, weights="none", epoch=1)
    save_checkpoint(project_copy / "models/model.pt", model, card)
    params = project_copy / "params.yaml"
    params.write_text(
        params.read_text().replace("bootstrap_resamples: 1000", "bootstrap_resamples: 50")
    )
    run([sys.executable, "stages/evaluate.py"], project_copy)
    run([sys.executable, "stages/gradcam.py"], project_copy)
    return project_copy


def test_evaluate_stage_outputs_recompute_from_predictions_file(evaluated_project: Path):
    root = evaluated_project
    report = json.loads((root / "metrics/eval.json").read_text())
    frame = pd.read_csv(root / "plots/predictions.csv")
    assert len(frame) == report["test_images"] == 18
    recomputed = metrics_from_predictions(frame, 50, 0.95, 0)
    assert recomputed == {k: v for k, v in report.items() if k != "calibration"}
    y_true, probabilities, _ = read_predictions(frame)
    calibration = report["calibration"]
    assert calibration_summary(y_true, probabilities, 15) == calibration["uncalibrated"]
    scaled = scale_probabilities(probabilities, calibration["temperature"])
    after = calibration_summary(y_true, scaled, 15)
    assert after == pytest.approx(calibration["temperature_scaled"], abs=2e-6)
    # Every declared plot file exists: one ROC and PR curve per class, both reliability tables.
    for folder in ("roc", "pr"):
        assert sorted(p.stem for p in (root / "plots" / folder).glob("*.csv")) == list(CLASSES)
    assert {p.stem for p in (root / "plots/reliability").glob("*.csv")} == {
        "uncalibrated",
        "temperature_scaled",
    }
    per_class = pd.read_csv(root / "plots/per_class.csv")
    assert len(per_class) == 3 * 4


def test_gradcam_stage_writes_grids_and_localisation(evaluated_project: Path):
    root = evaluated_project
    report = json.loads((root / "metrics/gradcam.json").read_text())
    assert report["layer"] == "layer2"  # 32 px: layer2 is 4x4, the largest resnet18 map
    assert report["images_with_masks"] == 12  # Normal phantoms have empty masks
    assert set(report["per_class"]) == {"COVID", "Viral Pneumonia"}
    for name in CLASSES:
        for outcome in ("correct", "wrong"):
            assert (root / "plots/gradcam" / f"{name}_{outcome}.png").stat().st_size > 0


def test_dvc_renders_every_evaluation_plot(evaluated_project: Path):
    shown = json.loads(run(["dvc", "plots", "show", "--json"], evaluated_project).stdout)
    assert not shown.get("errors")
    rendered = set(shown["data"])
    expected = {
        "Confusion matrix, counts (test split)",
        "Confusion matrix, normalised by true class (test split)",
        "plots/per_class.csv",
        "plots/reliability/uncalibrated.csv",
        "plots/reliability/temperature_scaled.csv",
        *(f"plots/{kind}/{name}.csv" for kind in ("roc", "pr") for name in CLASSES),
    }
    assert expected <= rendered
    for name in expected:
        (plot,) = shown["data"][name]
        assert plot["type"] == "vega" and plot["content"]["data"]["values"], name


def test_evaluate_model_without_temperature_scaling_never_reads_val(tmp_path: Path):
    make_split_folders(tmp_path, size=64, per_class=4)
    shutil.rmtree(tmp_path / "data/split/val")  # would fail to load if it were read
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES))
    card = ModelCard("resnet18", CLASSES, image_size=32, weights="none", epoch=1)
    cfg = EvaluateConfig(bootstrap_resamples=20, temperature_scaling=False)
    result = evaluate_model(model, card, tmp_path / "data/split", cfg, torch.device("cpu"))
    assert set(result.reliability) == {"uncalibrated"}
    assert "temperature" not in result.report["calibration"]
    assert result.files == sorted(result.files) and len(result.files) == 12
    assert result.files[0] == "COVID/test-0.png"
    assert np.allclose(result.probabilities.sum(1), 1, atol=1e-5)
    assert result.report["test_images"] == 12
    assert "on 12 images" in summary_line(result)
    figures = evaluation_figures(result)
    assert set(figures) == {
        "confusion_matrix.png",
        "roc.png",
        "precision_recall.png",
        "reliability.png",
        "per_class.png",
    }
    assert all(figure.axes for figure in figures.values())


def test_summary_line_prints_a_zero_bound_as_zero() -> None:
    # issue 16, case 11: `low or nan` printed a 0.0 lower bound as nan.
    report = {
        "accuracy": 0.1,
        "accuracy_ci": {"low": 0.0, "high": 0.25},
        "macro": {"f1": 0.1},
        "calibration": {"uncalibrated": {"ece": 0.2}},
    }
    result = Evaluation(CLASSES, [], np.zeros(4), np.zeros((4, 3)), report, {}, {}, pd.DataFrame())
    assert "test accuracy 0.100 [0.000, 0.250]" in summary_line(result)
    no_interval = {**report, "accuracy_ci": {}}
    assert "[nan, nan]" in summary_line(dataclasses.replace(result, report=no_interval))

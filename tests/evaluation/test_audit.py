"""The shortcut audit (cxr.evaluation.audit): the lung field and its occlusion, the verdict,
probes that find what the embeddings hold without leaking a patient across folds, the
Grad-CAM section, the plot table and figure; and the audit stage on a small project copy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.core.config import AuditConfig, EvaluateConfig
from cxr.evaluation.audit import (
    audit_figure,
    audit_rows,
    box_field,
    gradcam_section,
    headline,
    lung_fields,
    occlude,
    occluded_views,
    occlusion_report,
    probe,
    probe_splitter,
    probes,
    summary_lines,
    verdict_of,
)
from tests.helpers.project import EVAL_CLASSES, copy_project, make_split_folders, run, set_params

CLASSES = ("COVID", "Normal", "Pneumonia")
ALONE_90 = np.arange(90)  # 90 images, each its own patient


# --- occlusion ---------------------------------------------------------------------------


def test_lung_field_is_the_mask_where_there_is_one_else_the_box() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    fields, masked = lung_fields([mask, None], 10, (0.2, 0.1, 0.8, 0.9))
    assert masked == 1
    assert np.array_equal(fields[0], mask)
    box = np.zeros((10, 10), bool)
    box[1:9, 2:8] = True  # rows y0..y1 = 1..9, columns x0..x1 = 2..8
    assert np.array_equal(fields[1], box)
    assert box_field(10, (0.0, 0.0, 1.0, 1.0)).all()


def test_hiding_a_mask_sets_exactly_its_pixels_and_lungs_only_is_the_complement() -> None:
    torch.manual_seed(0)
    pixels = torch.randint(1, 256, (2, 1, 8, 8), dtype=torch.uint8)  # never 0: 0 means hidden
    original = pixels.clone()
    fields = np.zeros((2, 8, 8), bool)
    fields[0, 1:4, 2:7] = True  # an irregular "mask" per image
    fields[1, 5:8, 0:3] = True
    views = occluded_views(pixels, fields, "black")
    hidden, only = views["lungs_hidden"][:, 0], views["lungs_only"][:, 0]
    inside = torch.from_numpy(fields)
    assert torch.equal(hidden == 0, inside)  # exactly the field's pixels are black
    assert torch.equal(hidden[~inside], pixels[:, 0][~inside])  # the rest untouched
    assert torch.equal(only == 0, ~inside)  # lungs only: exactly the rest is black
    assert torch.equal(hidden + only, pixels[:, 0])  # each pixel shown in exactly one view
    assert views["intact"] is pixels
    assert torch.equal(pixels, original)  # the input is never changed in place


def test_the_box_hides_exactly_the_box() -> None:
    pixels = torch.full((1, 1, 20, 20), 200, dtype=torch.uint8)
    fields, masked = lung_fields([None], 20, (0.12, 0.1, 0.88, 0.9))
    hidden = occlude(pixels, fields, "black")[0, 0]
    assert masked == 0
    rows, columns = np.nonzero(hidden.numpy() == 0)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (2, 17, 2, 17)
    assert int((hidden == 0).sum()) == 16 * 16


def test_fill_mean_uses_each_images_own_mean_and_black_uses_zero() -> None:
    pixels = torch.stack(
        [torch.full((1, 4, 4), 10, dtype=torch.uint8), torch.full((1, 4, 4), 30, dtype=torch.uint8)]
    )
    pixels[1, 0, 0, :] = 90  # image 1: mean (12 * 30 + 4 * 90) / 16 = 45
    hide = np.zeros((2, 4, 4), bool)
    hide[:, 2:, 2:] = True
    mean = occlude(pixels, hide, "mean")
    assert (mean[0, 0, 2:, 2:] == 10).all() and (mean[1, 0, 2:, 2:] == 45).all()
    assert torch.equal(mean[1, 0, 0], pixels[1, 0, 0])  # the visible pixels stay
    assert (occlude(pixels, hide, "black")[:, 0, 2:, 2:] == 0).all()


def test_the_box_must_lie_inside_the_image_with_its_corners_in_order() -> None:
    assert AuditConfig(box=(0.0, 0.0, 1.0, 1.0)).box == (0.0, 0.0, 1.0, 1.0)
    for box in ((0.5, 0.1, 0.4, 0.9), (0.1, 0.1, 0.9, 1.2), (-0.1, 0.1, 0.9, 0.9)):
        with pytest.raises(ValueError, match="x0 < x1"):
            AuditConfig(box=box)


# --- the verdict -------------------------------------------------------------------------


def conditions(y: np.ndarray, hidden: np.ndarray) -> dict[str, np.ndarray]:
    """Intact and lungs only right on every image; lungs hidden as given."""
    right = np.eye(3)[y]
    return {"intact": right, "lungs_hidden": hidden, "lungs_only": right}


def test_a_model_right_with_the_lungs_hidden_is_a_shortcut() -> None:
    y = np.repeat([0, 1, 2], 30)
    report = occlusion_report(
        y, conditions(y, np.eye(3)[y]), CLASSES, EvaluateConfig(bootstrap_resamples=100), ALONE_90
    )
    assert report["verdict"] == "shortcut"
    assert report["chance"] == pytest.approx(1 / 3, abs=1e-6)
    assert report["lungs_hidden"]["balanced_accuracy_ci"]["low"] == 1.0
    assert report["lungs_hidden"]["minus_intact"]["difference"] == 0.0
    assert summary_lines(
        {"occlusion": report, "probes": {"skipped": "x"}, "gradcam": {"skipped": "y"}}
    )[1].startswith("WARNING: audit: the model classifies well above chance")


def test_a_model_at_chance_with_the_lungs_hidden_shows_no_evidence() -> None:
    y = np.repeat([0, 1, 2], 30)
    always_covid = np.tile([0.8, 0.1, 0.1], (90, 1))  # recall 1, 0, 0: balanced 1/3
    report = occlusion_report(
        y, conditions(y, always_covid), CLASSES, EvaluateConfig(bootstrap_resamples=100), ALONE_90
    )
    assert report["verdict"] == "no_evidence"
    hidden = report["lungs_hidden"]
    assert hidden["recall"] == {"COVID": 1.0, "Normal": 0.0, "Pneumonia": 0.0}
    assert hidden["balanced_accuracy"] == pytest.approx(1 / 3, abs=1e-6)
    assert hidden["minus_intact"]["high"] < 0  # hiding the lungs cost it accuracy
    assert "WARNING" not in " ".join(
        summary_lines({"occlusion": report, "probes": {"skipped": "x"}, "gradcam": {}})
    )


def test_above_chance_with_an_interval_reaching_it_is_inconclusive() -> None:
    ci = {"low": 0.30, "high": 0.6}
    assert verdict_of({"balanced_accuracy": 0.45, "balanced_accuracy_ci": ci}, 1 / 3) == (
        "inconclusive"
    )
    ci_above = {"low": 0.34, "high": 0.6}
    assert verdict_of({"balanced_accuracy": 0.45, "balanced_accuracy_ci": ci_above}, 1 / 3) == (
        "shortcut"
    )
    # no bootstrap (resamples 0): only the point estimate speaks
    assert verdict_of({"balanced_accuracy": 0.9, "balanced_accuracy_ci": {}}, 0.5) == (
        "inconclusive"
    )


def test_plot_rows_and_figure_hold_each_class_and_the_balanced_accuracy() -> None:
    y = np.repeat([0, 1, 2], 10)
    report = occlusion_report(
        y, conditions(y, np.eye(3)[y]), CLASSES, EvaluateConfig(bootstrap_resamples=0), y * 0
    )  # resamples 0: the patients play no part
    rows = audit_rows(report, CLASSES)
    assert list(rows.columns) == ["condition", "class", "bar", "value"]
    assert len(rows) == 3 * (len(CLASSES) + 1) and rows["bar"].is_unique
    assert "COVID · lungs hidden" in set(rows["bar"])
    assert "balanced accuracy · lungs only" in set(rows["bar"])
    figure = audit_figure(rows, report["chance"], report["verdict"])
    axis = figure.axes[0]
    assert len(axis.patches) == len(rows)  # one bar per row
    assert "lungs hidden" in axis.get_title()
    assert axis.get_ylabel() and axis.get_xlabel()


# --- probes ------------------------------------------------------------------------------


def test_probe_finds_a_separable_source_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    source = np.repeat(["nih", "hannover", "ieee"], 40)
    groups = np.arange(120).astype(str)
    separable = rng.normal(size=(120, 6))
    separable[:, 0] += 6 * (source == "nih")
    separable[:, 1] += 6 * (source == "hannover")
    found = probe(separable, source, groups, 3, 1.0, 0)
    assert found["balanced_accuracy"] > 0.95
    assert found["chance"] == pytest.approx(1 / 3, abs=1e-6)
    assert found["values"] == {"hannover": 40, "ieee": 40, "nih": 40}
    noise = probe(rng.normal(size=(120, 6)), source, groups, 3, 1.0, 0)
    assert abs(noise["balanced_accuracy"] - 1 / 3) < 0.2


def test_probe_folds_never_split_a_patient() -> None:
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(30), 3).astype(str)
    target = np.repeat(rng.choice(["a", "b"], 30), 3)
    features = rng.normal(size=(90, 4))
    splitter = probe_splitter(4, seed=0)
    tested = []
    for train, test in splitter.split(features, target, groups=patients):
        assert not set(patients[train]) & set(patients[test])
        tested.extend(test)
    assert sorted(tested) == list(range(90))  # every image scored once


def test_sources_with_too_few_images_are_dropped_and_named() -> None:
    rng = np.random.default_rng(3)
    source = np.array(["a"] * 20 + ["b"] * 20 + ["tiny"] * 2)
    features = rng.normal(size=(42, 3))
    found = probe(features, source, np.arange(42).astype(str), 3, 1.0, 0)
    assert found["dropped"] == {"tiny": 2}
    assert found["values"] == {"a": 20, "b": 20} and found["chance"] == 0.5
    alone = probe(features[:22], source[np.r_[0:20, 40:42]], np.arange(22).astype(str), 3, 1, 0)
    assert "skipped" in alone  # one source left: nothing to tell apart


def test_probes_skip_without_a_source_and_probe_classes_within_a_mixed_source() -> None:
    rng = np.random.default_rng(2)
    cfg = AuditConfig(probe_folds=3)
    labels = np.repeat([0, 1, 2], 20)
    features = rng.normal(size=(60, 4))
    features[:, 0] += 5 * (labels == 1)  # Normal stands apart from COVID
    no_metadata = pd.DataFrame(index=range(60))
    assert "skipped" in probes(features, labels, no_metadata, CLASSES, cfg, "patient")
    no_values = pd.DataFrame({"source": [""] * 60})
    assert "skipped" in probes(features, labels, no_values, CLASSES, cfg, "patient")
    metadata = pd.DataFrame(
        {"source": ["site"] * 40 + ["nih"] * 20, "patient": [f"p{i}" for i in range(60)]}
    )
    found = probes(features, labels, metadata, CLASSES, cfg, "patient")
    assert list(found["class_within_source"]) == ["site"]  # nih holds one class only
    within = found["class_within_source"]["site"]
    assert within["values"] == {"COVID": 20, "Normal": 20}
    assert within["balanced_accuracy"] > 0.9
    assert found["source"]["values"] == {"nih": 20, "site": 40}
    report = {
        "occlusion": occlusion_report(
            labels,
            conditions(labels, np.eye(3)[labels]),
            CLASSES,
            EvaluateConfig(bootstrap_resamples=0),
            np.arange(60),
        ),
        "probes": found,
        "gradcam": gradcam_section({}),
    }
    numbers = headline(report)
    assert numbers["source_probe_chance"] == 0.5 and "gradcam_energy_outside_lungs" not in numbers
    assert all(isinstance(v, float) for v in numbers.values())


def test_gradcam_section_reports_energy_outside_the_lungs() -> None:
    section = gradcam_section({"overall": {"energy_in_mask": 0.7, "mask_area": 0.3, "images": 9}})
    assert section == {"energy_outside_lungs": 0.3, "area_outside_lungs": 0.7, "images": 9}
    assert "skipped" in gradcam_section({"overall": {}})


# --- the stage ---------------------------------------------------------------------------


@pytest.mark.e2e  # runs the audit stage for real (README: the slow part)
def test_audit_stage_writes_its_report_metrics_and_plots(tmp_path: Path) -> None:
    """An untrained model on tiny phantom splits (lesion masks stand in for lung masks; the
    metadata names three sites): every output is there and agrees with the others."""
    from cxr.training.checkpoint import ModelCard, save_checkpoint
    from cxr.training.models import build_model

    project = copy_project(tmp_path / "project")
    make_split_folders(project, size=48, per_class=6)
    torch.manual_seed(0)
    card = ModelCard("resnet18", EVAL_CLASSES, image_size=32, weights="none", epoch=1)
    save_checkpoint(project / "models/model.pt", build_model("resnet18", 3), card)
    overall = {"energy_in_mask": 0.25, "mask_area": 0.2, "images": 18}
    (project / "reports").mkdir(exist_ok=True)
    (project / "reports/gradcam.json").write_text(json.dumps({"overall": overall}))
    set_params(project, {"audit.probe_folds": 2, "evaluate.bootstrap_resamples": 20})
    done = run([sys.executable, "stages/audit.py"], project)
    report = json.loads((project / "reports/audit.json").read_text())
    metrics = json.loads((project / "metrics/audit.json").read_text())
    occlusion = report["occlusion"]
    assert occlusion["lung_masks"] + occlusion["lung_boxes"] == 18  # the test split
    assert occlusion["verdict"] in ("shortcut", "inconclusive", "no_evidence")
    assert set(metrics) == {"source_probe_balanced_accuracy", "source_probe_chance"}
    assert (
        metrics["source_probe_balanced_accuracy"] == report["probes"]["source"]["balanced_accuracy"]
    )
    assert report["gradcam"]["energy_outside_lungs"] == 0.75
    # val and test only: the train split's images (site-a has 8 there) are not probed
    assert report["probes"]["source"]["values"] == {"site-a": 12, "site-b": 12, "site-c": 12}
    table = pd.read_csv(project / "plots/audit.csv")
    assert len(table) == 3 * 4
    assert (project / "plots/audit.png").read_bytes()[:4] == b"\x89PNG"
    assert "audit: balanced accuracy intact" in done.stdout and "audit: took" in done.stdout

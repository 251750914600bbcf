"""End to end on cxrmix, leaving one source out: the pipeline trains on every source but
Hannover and scores Hannover's COVID images as an external folder (evaluate.external), with
the results per source, the source-only baseline and the confounding warning on the test
split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.project import GRADCAM_ONLY, copy_project, run, set_params
from tests.helpers.sources import linked_subset

pytestmark = pytest.mark.e2e

# Small images and few epochs: what is checked is that every part is there and right, not
# the recipe's quality (docs/results.md's cxrmix results come from benchmarks/recipe_pipeline.py).
SMALL = {
    "evaluate.bootstrap_resamples": 100,
    "augment.target": "none",
    "train.image_size": 64,
    "train.finetune": "top",
    "train.batch_augment.enabled": False,
    "train.epochs": 3,
    "lr": 0.003,
    "gradcam.images_per_class": 1,
    **GRADCAM_ONLY,  # the audit reads only Grad-CAM's localisation
    "audit.probe_folds": 3,
}


def test_leave_hannover_out_and_score_it_as_an_external_folder(
    mix_data: Path, tmp_path: Path
) -> None:
    train_on = linked_subset(mix_data, tmp_path / "without", lambda m: m["source"] != "hannover")
    held_out = linked_subset(mix_data, tmp_path / "hannover", lambda m: m["source"] == "hannover")
    project = copy_project(tmp_path / "project")
    set_params(
        project,
        {**SMALL, "data.source": str(train_on), "evaluate.external": [str(held_out)]},
    )
    done = run(["dvc", "repro", "evaluate", "audit"], project)
    assert "class and source are confounded" in done.stdout
    assert "source-only baseline" in done.stdout
    report = json.loads((project / "reports/eval.json").read_text())
    sources = set(report["subgroups"]["source"])
    assert sources == {"actualmed", "ieee8023", "nih-cxr14"}  # Hannover is out
    assert sum(g["images"] for g in report["subgroups"]["source"].values()) == report["test_images"]
    assert "Normal" in report["confounding"]["confounded"]
    assert report["baselines"]["source_only"]["balanced_accuracy"] > 0.4
    # the intervals resample patients: cxrmix's test split holds patients with several films
    metadata = pd.read_csv(project / "data/metadata.csv", dtype=str, keep_default_na=False)
    tested = {f"{f.parent.name}/{f.name}" for f in (project / "data/split/test").glob("*/*")}
    rows = metadata[metadata["file"].isin(tested)]
    assert len(rows) == report["test_images"]
    patients = len(rows.groupby(["source", "patient"]))
    assert report["bootstrap_units"] == patients < report["test_images"]
    assert f"of {patients} patients" in done.stdout
    # plots/predictions.csv groups the films by patient with opaque codes, and cxr-compare
    # resamples those patients
    predictions = pd.read_csv(project / "plots/predictions.csv", dtype=str)
    named = rows.set_index("file").loc[predictions["image"]]
    truth = pd.factorize(named["source"] + "/" + named["patient"])[0]
    assert (pd.factorize(predictions["patient"])[0] == truth).all()
    assert predictions["patient"].str.fullmatch(r"p\d+").all()  # no patient id in git
    compared = run(["cxr-compare", "a=plots/predictions.csv", "b=plots/predictions.csv"], project)
    assert f"{report['test_images']} test images of {patients} patients" in compared.stdout
    external = json.loads((project / "reports/external.json").read_text())[str(held_out)]
    assert external["images"] == 70
    assert external["classes_present"] == ["COVID"]
    assert list(external["subgroups"]["source"]) == ["hannover"]
    # the source-only baseline has never seen Hannover: its guess is its unknown-source one
    assert external["baselines"]["source_only"]["balanced_accuracy"] in (0.0, 1.0)
    recall = external["per_class"]["COVID"]["recall"]
    assert 0.0 <= recall <= 1.0
    print(f"cxrmix leave-Hannover-out (64 px, 3 epochs): Hannover COVID recall {recall:.3f}")
    # the audit: occlusion with the lung masks of the cxr3 images and the box elsewhere, and
    # the probes, with the source probe far above chance on data whose sources differ
    audit = json.loads((project / "reports/audit.json").read_text())
    occlusion = audit["occlusion"]
    assert occlusion["lung_masks"] > 0 and occlusion["lung_boxes"] > 0
    assert occlusion["lung_masks"] + occlusion["lung_boxes"] == report["test_images"]
    assert occlusion["intact"]["balanced_accuracy"] == pytest.approx(
        report["balanced_accuracy"], abs=1e-6
    )  # the same model on the same images as the evaluate stage
    assert occlusion["verdict"] in ("shortcut", "inconclusive", "no_evidence")
    assert "audit: " in done.stdout
    source = audit["probes"]["source"]
    assert set(source["values"]) == {"actualmed", "ieee8023", "nih-cxr14"}
    assert source["balanced_accuracy"] > source["chance"] + 0.2
    assert "nih-cxr14" in audit["probes"]["class_within_source"]  # Normal vs Pneumonia
    gradcam = audit["gradcam"]  # Grad-CAM's energy outside the lungs, beside their area
    assert gradcam["images"] > 0 and 0 < gradcam["area_outside_lungs"] < 1
    assert 0 <= gradcam["energy_outside_lungs"] <= 1
    headline = json.loads((project / "metrics/audit.json").read_text())
    assert headline["source_probe_balanced_accuracy"] == source["balanced_accuracy"]
    print("cxrmix audit (64 px):", json.dumps(headline))

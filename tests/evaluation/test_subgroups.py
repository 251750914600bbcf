"""Results per subgroup, the source-only baseline and the confounding check, against
independent computations (scikit-learn per group, a per-group bootstrap by hand) and on the
real cxrmix manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from cxr.evaluation.metrics import baseline_report
from cxr.evaluation.subgroups import (
    acquisition_features,
    age_bands,
    confounding,
    confounding_line,
    source_only_probabilities,
    subgroup_report,
    subgroup_rows,
)

CLASSES = ("COVID", "Normal", "Pneumonia")


def noisy_predictions(y: np.ndarray, right: float, seed: int = 0) -> np.ndarray:
    """Probabilities whose argmax is the truth for about `right` of the images."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(3), len(y))
    keep = rng.random(len(y)) < right
    probabilities[keep, y[keep]] += 1.0
    return probabilities / probabilities.sum(1, keepdims=True)


def test_age_bands_cover_every_age_once_and_mark_missing() -> None:
    ages = pd.Series(["17", "39.5", "40", "59", "60", "79", "80", "97", "", "n/a"])
    assert list(age_bands(ages, (40, 60, 80))) == [
        "<40", "<40", "40-59", "40-59", "60-79", "60-79", "80+", "80+", "unknown", "unknown",
    ]  # fmt: skip


def test_per_group_metrics_equal_scikit_learn_on_each_group() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probabilities = noisy_predictions(y, 0.6)
    metadata = pd.DataFrame(
        {
            "source": rng.choice(["nih", "hannover", "ieee8023"], 300),
            "sex": rng.choice(["F", "M", ""], 300),
            "age": rng.integers(18, 95, 300).astype(str),
        }
    )
    report = subgroup_report(
        y, probabilities, metadata, CLASSES, ["source", "sex", "view", "age"], (40, 60, 80),
        200, 0.95, 0, np.arange(300),
    )  # fmt: skip
    assert report["skipped"] == ["view"]  # not in the metadata: listed, not invented
    assert set(report["sex"]) == {"F", "M", "unknown"}
    predicted = probabilities.argmax(1)
    for column in ("source", "sex"):
        values = metadata[column].replace("", "unknown")
        for group, entry in report[column].items():
            rows = (values == group).to_numpy()
            assert entry["images"] == rows.sum()
            assert entry["accuracy"] == pytest.approx((y[rows] == predicted[rows]).mean())
            assert entry["balanced_accuracy"] == pytest.approx(
                balanced_accuracy_score(y[rows], predicted[rows]), abs=1e-6
            )
            for k, name in enumerate(CLASSES):
                truth = y[rows] == k
                assert entry["recall"][name] == pytest.approx((predicted[rows][truth] == k).mean())
            ci = entry["balanced_accuracy_ci"]
            assert ci["low"] <= entry["balanced_accuracy"] <= ci["high"]
    # the interval is the percentile bootstrap over the group's own images (each its own
    # patient here), recomputed
    rows = (metadata["source"] == "nih").to_numpy()
    draws = np.random.default_rng(0).integers(0, rows.sum(), size=(200, rows.sum()))
    values = [balanced_accuracy_score(y[rows][d], predicted[rows][d]) for d in draws]
    low, high = np.quantile(values, [0.025, 0.975])
    assert report["source"]["nih"]["balanced_accuracy_ci"]["low"] == pytest.approx(low, abs=1e-6)
    assert report["source"]["nih"]["balanced_accuracy_ci"]["high"] == pytest.approx(high, abs=1e-6)
    table = subgroup_rows(report)
    assert len(table) == 2 * sum(len(report[c]) for c in ("source", "sex", "age"))
    assert table["bar"].is_unique  # one bar per group and metric in the DVC plot


def test_a_group_without_a_class_reports_no_recall_for_it() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    metadata = pd.DataFrame({"source": ["a", "a", "b", "b", "b", "b"]})
    report = subgroup_report(
        y, np.eye(3)[y], metadata, CLASSES, ["source"], (40,), 0, 0.95, 0, np.arange(6)
    )
    assert report["source"]["a"]["recall"] == {"COVID": 1.0, "Normal": None, "Pneumonia": None}
    assert report["source"]["b"]["balanced_accuracy"] == 1.0


def test_confounding_flags_a_class_from_one_source() -> None:
    labels = np.array([0] * 10 + [1] * 20)
    sources = pd.Series(["ieee"] * 6 + ["hannover"] * 4 + ["nih"] * 19 + ["ieee"])
    report = confounding(labels, sources, ("COVID", "Normal"), 0.9)
    assert report["confounded"] == ["Normal"]
    assert report["per_class"]["Normal"]["top_source_share"] == pytest.approx(0.95)
    assert "95% of Normal from nih" in confounding_line(report)
    assert confounding_line(confounding(labels, sources, ("COVID", "Normal"), 0.99)) is None


def test_source_only_baseline_learns_the_source_and_nothing_else() -> None:
    rng = np.random.default_rng(0)
    n = 400
    sources = rng.choice(["nih", "hannover"], n)
    view = rng.choice(["PA", "AP"], n)
    by_source = np.where(sources == "hannover", 0, 1)  # a class that the source gives away
    independent = rng.integers(0, 2, n)  # a class that the source says nothing about
    features = acquisition_features(pd.DataFrame({"source": sources, "view": view}))
    train, test = slice(0, 300), slice(300, n)
    for labels, expected in ((by_source, 1.0), (independent, 0.5)):
        probabilities = source_only_probabilities(
            features.iloc[train], labels[train], features.iloc[test], 2
        )
        score = balanced_accuracy_score(labels[test], probabilities.argmax(1))
        assert score == pytest.approx(expected, abs=0.12)
    assert acquisition_features(pd.DataFrame({"sex": ["F"]})) is None


def test_model_minus_source_only_is_paired_and_judged() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200)
    model = np.eye(3)[y] * 0.9 + 0.05  # always right
    weak = noisy_predictions(y, 0.3)
    report = baseline_report(y, model, y, CLASSES, 200, 0.95, 0, others={"source_only": weak})
    difference = report["model_minus_source_only"]
    assert difference["balanced_accuracy"]["difference"] == pytest.approx(
        1.0 - balanced_accuracy_score(y, weak.argmax(1)), abs=1e-6
    )
    assert difference["verdict"] == "beats"
    assert (
        report["source_only"]["balanced_accuracy"]
        < report["model_minus_majority"]["balanced_accuracy"]["difference"]
    )
    worse = baseline_report(y, weak, y, CLASSES, 200, 0.95, 0, others={"source_only": model})
    assert worse["model_minus_source_only"]["verdict"] == "loses"


def test_on_cxrmix_the_source_alone_separates_covid(mix_data: Path) -> None:
    """The trap of the real data set, measured: a classifier that sees only an image's source
    and view, fitted on half of cxrmix's patients, finds COVID in the other half."""
    frame = pd.read_csv(mix_data / "manifest.csv", keep_default_na=False, dtype=str)
    labels = frame["class"].map({name: k for k, name in enumerate(CLASSES)}).to_numpy()
    patients = frame["patient"].unique()
    held = set(np.random.default_rng(0).choice(patients, len(patients) // 2, replace=False))
    test = frame["patient"].isin(held).to_numpy()
    features = acquisition_features(frame)
    probabilities = source_only_probabilities(
        features[~test], labels[~test], features[test], len(CLASSES)
    )
    predicted = probabilities.argmax(1)
    covid = labels[test] == 0
    assert (predicted[covid] == 0).mean() > 0.9  # no COVID image is an NIH one
    assert balanced_accuracy_score(labels[test], predicted) > 0.55
    report = confounding(labels[~test], features[~test]["source"], CLASSES, 0.9)
    assert "Normal" in report["confounded"]

"""Metrics against hand-worked values, bootstrap behaviour, and a predictions file
recomputing every metric after a CSV round trip."""

from __future__ import annotations

from fractions import Fraction as Q
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr.evaluation.metrics import (
    classification_metrics,
    metrics_from_predictions,
    one_vs_rest_auc,
)

CLASSES = ("A", "B", "C")
# Rows: true class, columns: predicted class. Column sums 9, 8, 8; row sums 8, 10, 7; N = 25.
HAND_MATRIX = np.array([[5, 2, 1], [1, 6, 3], [3, 0, 4]])


def labels_from_matrix(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(t, p) for (t, p), n in np.ndenumerate(matrix) for _ in range(n)]
    y_true, y_pred = (np.array(column) for column in zip(*pairs, strict=True))
    return y_true, y_pred


def confident(y_pred: np.ndarray, n_classes: int, top: float = 0.6) -> np.ndarray:
    probabilities = np.full((len(y_pred), n_classes), (1 - top) / (n_classes - 1))
    probabilities[np.arange(len(y_pred)), y_pred] = top
    return probabilities


def test_hand_made_confusion_matches_hand_worked_values():
    y_true, y_pred = labels_from_matrix(HAND_MATRIX)
    report = classification_metrics(y_true, confident(y_pred, 3), CLASSES, resamples=0)
    # Worked by hand from HAND_MATRIX: precision = diagonal / column, recall = diagonal / row,
    # specificity = TN / (N - row) with TN = N - row - column + diagonal.
    expected = {
        "A": {"precision": Q(5, 9), "recall": Q(5, 8), "specificity": Q(13, 17)},
        "B": {"precision": Q(6, 8), "recall": Q(6, 10), "specificity": Q(13, 15)},
        "C": {"precision": Q(4, 8), "recall": Q(4, 7), "specificity": Q(14, 18)},
    }
    for name, values in expected.items():
        got = report["per_class"][name]
        assert values["precision"] != values["recall"]  # the case is built to tell them apart
        for metric, value in values.items():
            assert got[metric] == pytest.approx(float(value), abs=1e-6), (name, metric)
        f1 = 2 * values["precision"] * values["recall"] / (values["precision"] + values["recall"])
        assert got["f1"] == pytest.approx(float(f1), abs=1e-6)
    assert report["per_class"]["B"]["support"] == 10
    assert report["accuracy"] == pytest.approx(15 / 25)
    recalls = [expected[c]["recall"] for c in CLASSES]
    assert report["balanced_accuracy"] == pytest.approx(float(sum(recalls) / 3), abs=1e-6)
    chance = Q(8 * 9 + 10 * 8 + 7 * 8, 25 * 25)
    kappa = (Q(15, 25) - chance) / (1 - chance)
    assert report["cohen_kappa"] == pytest.approx(float(kappa), abs=1e-6)
    macro_precision = sum(expected[c]["precision"] for c in CLASSES) / 3
    assert report["macro"]["precision"] == pytest.approx(float(macro_precision), abs=1e-6)
    weighted_recall = sum(r * n for r, n in zip(recalls, (8, 10, 7), strict=True)) / 25
    assert report["weighted"]["recall"] == pytest.approx(float(weighted_recall), abs=1e-6)


def test_one_vs_rest_auc_and_average_precision_by_hand():
    # One-vs-rest for class A, worked by hand.
    y_true = np.array([0, 0, 1, 1, 2, 2])
    p_a = np.array([0.9, 0.4, 0.5, 0.1, 0.2, 0.3])
    probabilities = np.stack([p_a, (1 - p_a) / 2, (1 - p_a) / 2], axis=1)
    report = classification_metrics(y_true, probabilities, CLASSES, resamples=0)
    # A positives {0.9, 0.4} vs negatives {0.5, 0.1, 0.2, 0.3}: 0.9 beats all 4, 0.4 beats 3
    # → AUC = 7/8. Ranked by score: 0.9 (pos), 0.5 (neg), 0.4 (pos) → AP = (1/1 + 2/3) / 2.
    assert report["per_class"]["A"]["roc_auc"] == pytest.approx(7 / 8)
    assert report["per_class"]["A"]["average_precision"] == pytest.approx((1 + 2 / 3) / 2)


def noisy_predictions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images, 3 classes, ~75 % accurate probabilities."""
    y_true = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y_true] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y_true, probabilities


def test_one_vs_rest_auc_by_ranks_is_scikit_learns() -> None:
    """Random and heavily tied scores (a tenth of the values rounded to one decimal), with
    classes missing from some draws: NaN exactly where scikit-learn has no AUC, else equal to
    its `roc_auc_score` within floating-point rounding."""
    rng = np.random.default_rng(3)
    compared = 0
    for i in range(300):
        n_classes = int(rng.integers(2, 5))
        size = int(rng.integers(2, 120))
        y_true = rng.integers(0, n_classes if i % 4 else 1 + n_classes // 2, size)
        scores = rng.dirichlet(np.ones(n_classes), size)
        if i % 2:
            scores = np.round(scores, 1)
        auc = one_vs_rest_auc(y_true, scores)
        for k in range(n_classes):
            positive = y_true == k
            if positive.all() or not positive.any():
                assert np.isnan(auc[k])
                continue
            assert auc[k] == pytest.approx(roc_auc_score(positive, scores[:, k]), abs=1e-12)
            compared += 1
    assert compared > 500


def test_bootstrap_intervals_contain_estimate_and_narrow_with_more_images():
    rng = np.random.default_rng(7)
    widths = {}
    for n in (60, 960):
        y_true, probabilities = noisy_predictions(n, rng)
        report = classification_metrics(y_true, probabilities, CLASSES, resamples=400, seed=3)
        for point, ci in (
            (report["accuracy"], report["accuracy_ci"]),
            (report["macro"]["f1"], report["macro_f1_ci"]),
            (report["macro"]["roc_auc"], report["macro_roc_auc_ci"]),
        ):
            assert ci["low"] <= point <= ci["high"]
            assert ci["low"] < ci["high"]
            widths.setdefault(n, []).append(ci["high"] - ci["low"])
    for small, large in zip(widths[60], widths[960], strict=True):
        assert large < small / 2  # ~1/sqrt(16) = 1/4 in theory


def test_bootstrap_is_seeded():
    y_true, probabilities = noisy_predictions(80, np.random.default_rng(1))
    first = classification_metrics(y_true, probabilities, CLASSES, resamples=200, seed=5)
    again = classification_metrics(y_true, probabilities, CLASSES, resamples=200, seed=5)
    other = classification_metrics(y_true, probabilities, CLASSES, resamples=200, seed=6)
    assert first == again
    assert first["accuracy_ci"] != other["accuracy_ci"]


def test_predictions_frame_recomputes_metrics_after_a_csv_round_trip(tmp_path: Path):
    from cxr.evaluation.metrics import predictions_frame, round_probabilities

    y_true, probabilities = noisy_predictions(90, np.random.default_rng(2))
    probabilities = round_probabilities(probabilities)
    report = classification_metrics(y_true, probabilities, CLASSES, 200, 0.95, 0)
    files = [f"{CLASSES[k]}/img{i}.png" for i, k in enumerate(y_true)]
    predictions_frame(files, y_true, probabilities, CLASSES).to_csv(tmp_path / "p.csv", index=False)
    assert metrics_from_predictions(pd.read_csv(tmp_path / "p.csv"), 200, 0.95, 0) == report
    # with patients (3 films each, ids never written): the same patient-level intervals
    patients = np.array([f"site/{i // 3}" for i in range(len(y_true))])
    report = classification_metrics(y_true, probabilities, CLASSES, 200, 0.95, 0, patients)
    frame = predictions_frame(files, y_true, probabilities, CLASSES, patients)
    frame.to_csv(tmp_path / "p.csv", index=False)
    assert "site/" not in (tmp_path / "p.csv").read_text()
    recomputed = metrics_from_predictions(pd.read_csv(tmp_path / "p.csv"), 200, 0.95, 0)
    assert recomputed == report and report["bootstrap_units"] == 30


def test_majority_baseline_against_hand_worked_values_and_verdicts() -> None:
    from sklearn.metrics import f1_score

    from cxr.evaluation.metrics import baseline_report

    train_labels = np.array([0] * 30 + [1] * 10 + [2] * 5)  # class A is the train majority
    y_true = np.array([0] * 12 + [1] * 6 + [2] * 4)
    perfect = np.eye(3)[y_true] * 0.9 + 0.1 / 3
    report = baseline_report(y_true, perfect, train_labels, CLASSES, resamples=300, seed=1)
    majority = report["majority"]
    assert majority["class"] == "A"
    assert majority["accuracy"] == pytest.approx(12 / 22, abs=1e-6)
    assert majority["balanced_accuracy"] == pytest.approx(1 / 3, abs=1e-6)
    always_a = np.zeros_like(y_true)
    expected_f1 = f1_score(y_true, always_a, labels=[0, 1, 2], average="macro", zero_division=0)
    assert majority["macro_f1"] == pytest.approx(expected_f1, abs=1e-6)
    difference = report["model_minus_majority"]["balanced_accuracy"]
    assert difference["difference"] == pytest.approx(1 - 1 / 3, abs=1e-6)
    assert difference["low"] > 0 and report["model_minus_majority"]["verdict"] == "beats"
    # the stratified baseline draws at the train shares: balanced accuracy near chance
    assert 0 <= report["stratified"]["balanced_accuracy"] <= 1
    assert report["stratified"]["balanced_accuracy_ci"]["low"] <= 1 / 3 + 0.2
    # a model that always answers the majority class is flagged
    constant = np.tile([0.8, 0.1, 0.1], (len(y_true), 1))
    flagged = baseline_report(y_true, constant, train_labels, CLASSES, resamples=100)
    assert flagged["model_minus_majority"]["balanced_accuracy"]["difference"] == 0
    assert flagged["model_minus_majority"]["verdict"] == "loses"


def test_paired_bootstrap_difference_is_the_resampled_gap() -> None:
    from cxr.evaluation.metrics import paired_bootstrap_difference

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 80)
    a = np.eye(3)[np.where(rng.random(80) < 0.7, y_true, (y_true + 1) % 3)]
    b = np.eye(3)[np.where(rng.random(80) < 0.5, y_true, (y_true + 1) % 3)]

    def accuracy(t: np.ndarray, p: np.ndarray) -> float:
        return float((p.argmax(1) == t).mean())

    result = paired_bootstrap_difference(y_true, a, b, accuracy, 500, 0.95, 3)
    assert result["difference"] == pytest.approx(accuracy(y_true, a) - accuracy(y_true, b))
    assert result["low"] <= result["difference"] <= result["high"]
    # recomputed independently: the same seeded draws, both models on each
    draws = np.random.default_rng(3).integers(0, 80, size=(500, 80))
    gaps = [accuracy(y_true[i], a[i]) - accuracy(y_true[i], b[i]) for i in draws]
    assert result["low"] == pytest.approx(np.quantile(gaps, 0.025), abs=1e-6)
    assert result["high"] == pytest.approx(np.quantile(gaps, 0.975), abs=1e-6)


# --- patient-level (cluster) bootstrap ------------------------------------------------------


def _accuracy(t: np.ndarray, p: np.ndarray) -> float:
    return float((p.argmax(1) == t).mean())


def test_patients_of_one_image_each_resample_exactly_as_images() -> None:
    from cxr.evaluation.metrics import resample_rows

    images = resample_rows(np.random.default_rng(4), 50, 30)
    alone = resample_rows(np.random.default_rng(4), 50, 30, np.arange(50).astype(str))
    assert all((a == b).all() for a, b in zip(images, alone, strict=True))


def test_a_resample_brings_every_image_of_each_drawn_patient() -> None:
    from cxr.evaluation.metrics import resample_rows

    patients = np.array(["p", "q", "p", "r", "q", "p"])
    for rows in resample_rows(np.random.default_rng(0), 6, 50, patients):
        drawn = patients[rows]
        # each patient comes with all its images, as many times as it was drawn
        for patient in set(drawn):
            assert (drawn == patient).sum() % (patients == patient).sum() == 0
        counts = {p: (drawn == p).sum() // (patients == p).sum() for p in set(drawn)}
        assert sum(counts.values()) == 3  # three patients drawn per resample


def test_patients_whose_images_share_the_outcome_widen_the_interval() -> None:
    from cxr.evaluation.metrics import bootstrap_ci, paired_bootstrap_difference

    # 20 patients of 6 images each; a patient's images are all right or all wrong
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(20), 6)
    y_true = rng.integers(0, 3, 120)
    right = np.repeat(rng.random(20) < 0.6, 6)
    scores = np.eye(3)[np.where(right, y_true, (y_true + 1) % 3)]
    by_image = bootstrap_ci(y_true, scores, _accuracy, 500, 0.95, 0)
    by_patient = bootstrap_ci(y_true, scores, _accuracy, 500, 0.95, 0, patients)
    image_width = by_image["high"] - by_image["low"]
    patient_width = by_patient["high"] - by_patient["low"]
    # 20 independent outcomes, not 120: about sqrt(6) ~ 2.4 times as wide
    assert patient_width > 1.8 * image_width, (image_width, patient_width)
    # one patient holding every image: each resample is the whole set, no spread at all
    whole = bootstrap_ci(y_true, scores, _accuracy, 100, 0.95, 0, np.zeros(120))
    assert whole["low"] == whole["high"] == pytest.approx(_accuracy(y_true, scores))
    paired = paired_bootstrap_difference(
        y_true, scores, np.eye(3)[y_true], _accuracy, 300, 0.95, 0, patients
    )
    assert paired["low"] < paired["difference"] < paired["high"] < 0


def test_classification_metrics_say_how_many_units_were_resampled() -> None:
    y_true, probabilities = noisy_predictions(60, np.random.default_rng(2))
    by_image = classification_metrics(y_true, probabilities, CLASSES, resamples=50)
    patients = np.repeat(np.arange(20), 3)
    by_patient = classification_metrics(y_true, probabilities, CLASSES, 50, 0.95, 0, patients)
    assert by_image["bootstrap_units"] == 60 and by_patient["bootstrap_units"] == 20
    assert by_image["balanced_accuracy"] == by_patient["balanced_accuracy"]
    assert by_image["balanced_accuracy_ci"] != by_patient["balanced_accuracy_ci"]

"""Selective prediction (cxr.evaluation.deferral) against brute-force computations and
statsmodels; the defer stage's numbers recomputed from the predictions file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from cxr.evaluation.calibration import scale_probabilities
from cxr.evaluation.deferral import (
    DeferralError,
    aurc,
    choose_threshold,
    decide,
    load_rule,
    operating_point,
    oracle_aurc,
    risk_coverage,
    upper_bound,
)
from cxr.evaluation.metrics import read_patients, read_predictions
from cxr.evaluation.proportions import proportion_ci


def scored(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences (with ties) and correctness that is likelier at high confidence."""
    rng = np.random.default_rng(seed)
    confidence = np.round(rng.uniform(0.3, 1.0, n), 2)
    correct = rng.random(n) < confidence
    return confidence, correct


def brute_risk(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> float:
    kept = confidence >= threshold
    return float((~correct[kept]).mean())


def test_risk_coverage_matches_every_threshold_counted_directly():
    confidence, correct = scored(200, 0)
    table = risk_coverage(confidence, correct)
    assert list(table["threshold"]) == sorted(set(confidence), reverse=True)
    for row in table.itertuples():
        assert row.coverage == pytest.approx((confidence >= row.threshold).mean())
        assert row.risk == pytest.approx(brute_risk(confidence, correct, row.threshold))


def test_aurc_is_the_mean_risk_of_the_top_k_without_ties():
    rng = np.random.default_rng(1)
    confidence, correct = rng.random(150), rng.random(150) < 0.7
    order = np.argsort(-confidence)
    expected = np.mean([(~correct[order[:k]]).mean() for k in range(1, 151)])
    assert aurc(confidence, correct) == pytest.approx(expected)
    # the oracle ranks every error last: its AURC is the lowest any ranking reaches
    perfect = np.where(correct, 1.0, 0.0) + rng.random(150) * 0.01
    assert oracle_aurc(correct) == pytest.approx(aurc(perfect, correct))
    assert oracle_aurc(correct) < aurc(confidence, correct)


def test_upper_bound_is_clopper_pearson_as_statsmodels_computes_it():
    for errors, n in [(0, 10), (3, 40), (12, 50), (49, 50)]:
        # one-sided upper bound at 95 % = upper end of the two-sided 90 % interval
        expected = proportion_confint(errors, n, alpha=0.10, method="beta")[1]
        assert upper_bound(errors, n, 0.95) == pytest.approx(expected)


@pytest.mark.parametrize("bound", ["empirical", "upper"])
def test_threshold_is_the_lowest_that_meets_the_target(bound: str):
    confidence, correct = scored(300, 2)
    chosen = choose_threshold(confidence, correct, 0.1, bound, 0.9)

    def meets(t: float) -> bool:
        kept = confidence >= t
        errors, n = int((~correct[kept]).sum()), int(kept.sum())
        value = upper_bound(errors, n, 0.9) if bound == "upper" else errors / n
        return value <= 0.1

    passing = [t for t in np.unique(confidence) if meets(t)]
    assert chosen.value == min(passing)
    assert chosen.coverage == pytest.approx((confidence >= min(passing)).mean())


def test_no_threshold_meeting_the_target_refers_everything():
    confidence, correct = np.array([0.9, 0.8, 0.7]), np.array([False, True, False])
    chosen = choose_threshold(confidence, correct, 0.05, "empirical", 0.95)
    assert chosen.value is None and chosen.coverage == 0.0
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    point = operating_point(np.array([1, 1, 1]), probabilities, None, None, ("a", "b"), 0.95)
    assert point["accepted"] == 0 and point["selective_risk"] is None
    rule = {"threshold": None, "temperature": None}
    assert decide(probabilities[0], rule)[1] == "refer"


def test_rule_for_another_model_is_refused(tmp_path: Path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    rule = tmp_path / "deferral.json"
    rule.write_text(json.dumps({"threshold": 0.8, "temperature": 1.5, "model_sha256": "0" * 64}))
    with pytest.raises(DeferralError, match="another model"):
        load_rule(None, model)
    assert load_rule(None, tmp_path / "elsewhere" / "model.pt") is None  # no rule beside it
    with pytest.raises(DeferralError, match="no such file"):
        load_rule(tmp_path / "missing.json", model)


def test_defer_stage_numbers_recompute_from_predictions_file(evaluated_project: Path):
    root = evaluated_project
    report = json.loads((root / "reports/deferral.json").read_text())
    rule = json.loads((root / "models/deferral.json").read_text())
    temperature = json.loads((root / "reports/eval.json").read_text())["calibration"]["temperature"]
    assert rule["temperature"] == report["temperature"] == temperature
    predictions = pd.read_csv(root / "plots/predictions.csv", dtype={"patient": str})
    y, probabilities, _ = read_predictions(predictions)
    confidence = scale_probabilities(probabilities, temperature).max(1)
    threshold = rule["threshold"]
    kept = confidence >= threshold if threshold is not None else np.zeros(len(y), bool)
    wrong = probabilities.argmax(1) != y
    test = report["test"]
    assert test["accepted"] == kept.sum() and test["coverage"] == pytest.approx(
        kept.mean(), abs=1e-6
    )
    # both outcomes are checked: test images kept (their error), or none (no risk to report)
    patients = read_patients(predictions)
    assert test["coverage_ci"] == proportion_ci(kept, 0.95, patients)
    if kept.any():
        assert test["selective_risk"] == pytest.approx(wrong[kept].mean(), abs=1e-6)
        assert test["selective_accuracy_ci"] == proportion_ci(~wrong[kept], 0.95, patients[kept])
    else:
        assert test["selective_risk"] is None and test["selective_accuracy"] is None
    assert test["overall_risk"] == pytest.approx(wrong.mean(), abs=1e-6)
    curve = pd.read_csv(root / "plots/risk_coverage.csv")
    assert curve["curve"].str.startswith("test · AURC").any()
    headline = json.loads((root / "metrics/deferral.json").read_text())
    assert headline["coverage"] == test["coverage"]
    sets = report["conformal"]["test"]
    assert (headline["set_coverage"], headline["mean_set_size"]) == (
        sets["coverage"],
        sets["mean_set_size"],
    )


def test_intervals_count_patients_not_films():
    """Every image shown twice as one patient's two films: the accuracy on the kept images and
    the coverage are the same, and their intervals are those of the effective number of
    films (cxr.evaluation.proportions), wider than when each film counts alone."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 120)
    probabilities = rng.dirichlet(np.ones(3), 120)
    probabilities[np.arange(120), y] += rng.random(120) < 0.7  # mostly right
    probabilities /= probabilities.sum(1, keepdims=True)
    twice = np.repeat(y, 2), np.repeat(probabilities, 2, axis=0)
    patients = np.repeat(np.arange(120), 2).astype(str)
    films = operating_point(*twice, 0.5, None, ("COVID", "Normal", "Pneumonia"), 0.95)
    grouped = operating_point(*twice, 0.5, None, ("COVID", "Normal", "Pneumonia"), 0.95, patients)
    keep = twice[1].max(1) >= 0.5
    assert grouped["coverage"] == films["coverage"] and grouped["accepted"] == keep.sum()
    assert grouped["selective_accuracy_ci"] == proportion_ci(
        twice[1][keep].argmax(1) == twice[0][keep], 0.95, patients[keep]
    )
    for key in ("coverage_ci", "selective_accuracy_ci"):
        width = grouped[key]["high"] - grouped[key]["low"]
        assert width > 1.3 * (films[key]["high"] - films[key]["low"]), key
        assert grouped[key]["effective_images"] < 0.55 * films[key]["effective_images"]

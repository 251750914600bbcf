"""Conformal prediction sets (cxr.evaluation.conformal) against brute-force split-conformal
quantiles, statsmodels' exact interval, and the coverage guarantee over many random
calibration/test splits of a synthetic score model; the defer stage's sets recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from cxr.core.config import ConformalConfig, ParamsError, parse_params
from cxr.evaluation.calibration import scale_probabilities
from cxr.evaluation.conformal import (
    alpha_curve,
    build_section,
    enough_images,
    expected_coverage,
    lines,
    prediction_sets,
    set_summary,
    sets_from_rule,
)
from cxr.evaluation.metrics import read_patients, read_predictions
from tests.helpers.project import project_params

CLASSES = ("COVID", "Normal", "Viral Pneumonia")


def scored(n: int, rng: np.random.Generator, classes: int = 3, signal: float = 1.5):
    """(labels, probabilities) of a synthetic model: softmax of noisy logits whose true
    class gets `signal` more."""
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += signal
    probabilities = np.exp(logits)
    return labels, probabilities / probabilities.sum(1, keepdims=True)


def brute_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score (Angelopoulos & Bates, eq. 1)."""
    rank = int(np.ceil((len(scores) + 1) * (1 - alpha)))
    return float(np.sort(scores)[rank - 1])


def brute_lac(labels, probabilities, test_probabilities, alpha):
    """LAC: score 1 - p(true class); the set keeps every class scoring within the quantile."""
    q = brute_quantile(1 - probabilities[np.arange(len(labels)), labels], alpha)
    return 1 - test_probabilities <= q


@pytest.mark.parametrize("n, alpha", [(25, 0.2), (60, 0.1), (199, 0.05)])
def test_lac_sets_equal_the_brute_force_quantile(n, alpha):
    rng = np.random.default_rng(n)
    calibration, test = scored(n, rng), scored(400, rng)
    sets = prediction_sets(calibration, test[1], alpha, ConformalConfig("lac", alpha))
    assert np.array_equal(sets, brute_lac(*calibration, test[1], alpha))


def test_mondrian_sets_use_each_class_quantile_alone():
    rng = np.random.default_rng(3)
    labels, probabilities = scored(240, rng)
    test = scored(300, rng)[1]
    cfg = ConformalConfig("lac", 0.1, mondrian=True)
    sets = prediction_sets((labels, probabilities), test, 0.1, cfg)
    for k in range(3):
        own = labels == k
        expected = brute_lac(labels[own], probabilities[own], test, 0.1)[:, k]
        assert np.array_equal(sets[:, k], expected), k


@pytest.mark.parametrize("method", ["lac", "aps", "raps"])
def test_coverage_over_many_random_splits_reaches_one_minus_alpha(method):
    """Exchangeable calibration and test images: coverage averaged over 150 random splits is
    at least 1 - alpha (LAC, whose scores are continuous: at most 1 - alpha + 1/(n + 1))."""
    rng, alpha, n = np.random.default_rng(7), 0.1, 150
    cfg = ConformalConfig(method, alpha)
    coverages = []
    for _ in range(150):
        (cal_y, cal_p), (test_y, test_p) = scored(n, rng), scored(300, rng)
        sets = prediction_sets((cal_y, cal_p), test_p, alpha, cfg)
        coverages.append(sets[np.arange(len(test_y)), test_y].mean())
    mean = float(np.mean(coverages))
    # the mean of 150 splits has a standard error of about 0.002
    assert mean >= 1 - alpha - 0.006, mean
    if method == "lac":
        assert mean <= 1 - alpha + 1 / (n + 1) + 0.006, mean


def test_sets_are_every_class_with_too_few_calibration_images():
    rng = np.random.default_rng(0)
    calibration, test = scored(15, rng), scored(50, rng)
    assert not enough_images(15, 0.05) and enough_images(21, 0.05)
    cfg = ConformalConfig("lac", 0.05)
    assert prediction_sets(calibration, test[1], 0.05, cfg).all()
    section = build_section(cfg, calibration, test, CLASSES, 0.95)
    assert section["enough_calibration_images"] is False
    assert section["test"]["full"] == 1.0 and section["test"]["coverage"] == 1.0
    assert any(line.startswith("WARNING: conformal: 15 val images") for line in lines(section))
    # RAPS tunes its penalty on a fifth of the calibration set: 60 images do for LAC at 0.1,
    # not for RAPS, whose MAPIE check comes only when the sets are made
    calibration = scored(60, rng)
    raps = build_section(ConformalConfig("raps", 0.1), calibration, test, CLASSES, 0.95)
    assert raps["enough_calibration_images"] is False and raps["test"]["full"] == 1.0
    assert build_section(ConformalConfig("lac", 0.1), calibration, test, CLASSES, 0.95)[
        "enough_calibration_images"
    ]


def test_summary_counts_and_exact_interval():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 90)
    sets = rng.random((90, 3)) < 0.5
    summary = set_summary(sets, labels, CLASSES, 0.1, 0.95, (90,))
    covered = sets[np.arange(90), labels]
    low, high = proportion_confint(covered.sum(), 90, alpha=0.05, method="beta")
    assert summary["coverage"] == pytest.approx(covered.mean(), abs=1e-6)
    assert (summary["coverage_ci"]["low"], summary["coverage_ci"]["high"]) == pytest.approx(
        (low, high), abs=1e-6
    )
    size = sets.sum(1)
    assert summary["mean_set_size"] == pytest.approx(size.mean(), abs=1e-6)
    assert summary["empty"] == pytest.approx((size == 0).mean(), abs=1e-6)
    assert summary["singleton"] == pytest.approx((size == 1).mean(), abs=1e-6)
    assert sum(summary["sizes"].values()) == 90
    for k, name in enumerate(CLASSES):
        assert summary["per_class"][name]["coverage"] == pytest.approx(
            covered[labels == k].mean(), abs=1e-6
        )
    # coverage about 0.5 is short of a 0.9 target by far more than sampling error
    assert summary["holds"] is False and summary["expected"]["p_value"] < 1e-4
    assert any(
        "test coverage is below what sets" in line
        for line in lines(
            {
                "method": "lac",
                "alpha": 0.1,
                "mondrian": False,
                "calibration_images": 90,
                "enough_calibration_images": True,
                "test": summary,
            }
        )
    )


def test_coverage_and_size_fall_as_alpha_grows():
    """LAC sets are nested in alpha: the curve's coverage and size never rise with it."""
    rng = np.random.default_rng(11)
    curve = alpha_curve(scored(200, rng), scored(400, rng), ConformalConfig("lac", 0.05))
    assert list(curve["alpha"]) == sorted(curve["alpha"])
    assert (np.diff(curve["coverage"]) <= 1e-12).all()
    assert (np.diff(curve["mean_set_size"]) <= 1e-12).all()
    assert curve["mean_set_size"].iloc[0] > curve["mean_set_size"].iloc[-1]
    assert np.allclose(curve["target_coverage"], 1 - curve["alpha"])


def test_mondrian_needs_lac_and_names_the_key():
    raw = project_params()
    raw["conformal"] |= {"method": "aps", "mondrian": True}
    with pytest.raises(ParamsError, match=r"conformal.*mondrian: true needs conformal.method"):
        parse_params(raw)


def test_defer_stage_sets_recompute_from_the_saved_files(evaluated_project: Path):
    root = evaluated_project
    report = json.loads((root / "reports/deferral.json").read_text())
    rule = json.loads((root / "models/deferral.json").read_text())
    section, stored = report["conformal"], rule["conformal"]
    assert (stored["method"], stored["alpha"]) == (section["method"], section["alpha"])
    predictions = pd.read_csv(root / "plots/predictions.csv", dtype={"patient": str})
    y, probabilities, classes = read_predictions(predictions)
    scaled = scale_probabilities(probabilities, rule["temperature"])
    sets = sets_from_rule(stored, scaled)
    labels = np.asarray(stored["calibration_labels"])
    sizes = (
        tuple(int((labels == k).sum()) for k in range(len(classes)))
        if stored["mondrian"]
        else (len(labels),)
    )
    patients = read_patients(predictions)
    recomputed = set_summary(sets, y, classes, stored["alpha"], 0.95, sizes, patients)
    assert recomputed == section["test"]
    assert len(stored["calibration_labels"]) == section["calibration_images"]
    curve = pd.read_csv(root / "plots/conformal.csv")
    assert list(curve.columns) == ["alpha", "target_coverage", "coverage", "mean_set_size"]


def test_expected_coverage_is_the_distribution_of_simulated_conformal_sets():
    """Covered counts of split-conformal sets over many random calibration and test draws
    (continuous scores: uniform, a brute-force quantile) follow the beta-binomial
    `expected_coverage` uses: its central 95 % range holds about 95 % of them, and its lower
    tail about 2.5 %."""
    rng, n, m, alpha = np.random.default_rng(3), 50, 40, 0.1
    counts = []
    for _ in range(4000):
        q = brute_quantile(rng.random(n), alpha)
        counts.append(int((rng.random(m) <= q).sum()))
    counts = np.array(counts)
    judged = [expected_coverage(int(c), m, n, alpha, 0.95) for c in counts[:600]]
    low, high = judged[0]["range"]["low"] * m, judged[0]["range"]["high"] * m
    inside = ((counts >= low) & (counts <= high)).mean()
    assert 0.93 <= inside <= 0.995, inside
    flagged = np.mean([not j["holds"] for j in judged])
    assert flagged <= 0.05, flagged  # "short beyond sampling error" is rare when all is right
    # the seed-0 cxrmix case docs/methods.md reports: 166 of 183 covered, 179 val images, alpha 0.05
    assert expected_coverage(166, 183, 179, 0.05, 0.95)["holds"] is True
    assert expected_coverage(150, 183, 179, 0.05, 0.95)["holds"] is False


def test_coverage_of_films_sharing_patients_is_judged_on_their_effective_number():
    """The same sets, each film shown twice as one patient's two films: counting films, 150 of
    180 covered looks short of a 0.9 target beyond sampling error; as the 90 patients they
    are, the interval is wider and the shortfall within what 90 test units give."""
    rng = np.random.default_rng(8)
    labels = np.repeat(rng.integers(0, 3, 90), 2)
    hit = np.repeat(np.arange(90) < 75, 2)  # 150 of 180 films covered
    sets = np.zeros((180, 3), dtype=bool)
    sets[np.arange(180), np.where(hit, labels, (labels + 1) % 3)] = True
    patients = np.repeat(np.arange(90), 2).astype(str)
    films = set_summary(sets, labels, CLASSES, 0.1, 0.95, (200,))
    grouped = set_summary(sets, labels, CLASSES, 0.1, 0.95, (200,), patients)
    assert films["coverage"] == grouped["coverage"] == pytest.approx(150 / 180, abs=1e-6)
    width = {
        k: s["coverage_ci"]["high"] - s["coverage_ci"]["low"]
        for k, s in (("films", films), ("patients", grouped))
    }
    assert width["patients"] > 1.35 * width["films"]
    assert grouped["coverage_ci"]["effective_images"] == pytest.approx(89, abs=0.1)
    assert grouped["expected"]["p_value"] > films["expected"]["p_value"]
    for name in CLASSES:  # per class too, on that class's patients
        assert (
            grouped["per_class"][name]["coverage_ci"]["effective_images"]
            < (films["per_class"][name]["coverage_ci"]["effective_images"])
        )

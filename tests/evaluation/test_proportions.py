"""Intervals for shares of films that come in patients (cxr.evaluation.proportions), against
statsmodels' Clopper-Pearson interval and by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from cxr.evaluation.proportions import effective_size, proportion_ci


def hits_of(count: int, n: int) -> np.ndarray:
    return np.arange(n) < count


@pytest.mark.parametrize("count", [0, 1, 37, 59, 60])
def test_without_patients_it_is_clopper_pearson(count: int):
    hits = hits_of(count, 60)
    low, high = proportion_confint(count, 60, alpha=0.05, method="beta")
    for groups in (None, np.arange(60).astype(str)):  # no patients, or one film each
        ci = proportion_ci(hits, 0.95, groups)
        assert (ci["low"], ci["high"]) == pytest.approx((low, high), abs=1e-6)
        assert ci["effective_images"] == 60


def test_two_identical_films_per_patient_count_about_once():
    """Each of 40 patients has two films with the same outcome: the films are worth
    40 - 1 independent ones (the variance's G / (G - 1) factor), not 80."""
    outcome = hits_of(29, 40)
    hits, patients = np.repeat(outcome, 2), np.repeat(np.arange(40), 2)
    assert effective_size(hits, patients) == pytest.approx(39)
    ci = proportion_ci(hits, 0.95, patients)
    share = 29 / 40
    low, high = proportion_confint(share * 39, 39, alpha=0.05, method="beta")
    assert (ci["low"], ci["high"]) == pytest.approx((low, high), abs=1e-6)
    films = proportion_ci(hits, 0.95)
    assert ci["high"] - ci["low"] > 1.35 * (films["high"] - films["low"])


def test_outcomes_unrelated_to_the_patient_never_count_more_than_the_films():
    rng = np.random.default_rng(0)
    hits, patients = rng.random(300) < 0.7, rng.integers(0, 120, 300)
    assert effective_size(hits, patients) <= 300
    assert effective_size(hits, np.zeros(300)) == 1.0  # a single patient is one unit
    assert proportion_ci(np.array([], dtype=bool), 0.95) is None


def test_intervals_cover_the_true_share_when_films_share_their_patient_outcome():
    """Simulated test splits: 60 patients with 1-4 films each, every film of a patient right
    or wrong together, true share 0.8. The film-counting interval misses far more often than
    5 %; the one on the effective size stays near its 95 %."""
    rng = np.random.default_rng(11)
    covered_patients, covered_films = [], []
    for _ in range(1500):
        films = rng.integers(1, 5, 60)
        patients = np.repeat(np.arange(60), films)
        hits = np.repeat(rng.random(60) < 0.8, films)
        for groups, tally in ((patients, covered_patients), (None, covered_films)):
            ci = proportion_ci(hits, 0.95, groups)
            tally.append(ci["low"] <= 0.8 <= ci["high"])
    assert np.mean(covered_patients) >= 0.92, np.mean(covered_patients)
    assert np.mean(covered_films) <= 0.87, np.mean(covered_films)

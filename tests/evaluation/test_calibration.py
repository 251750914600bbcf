"""Expected calibration error and temperature scaling on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from cxr.evaluation.calibration import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_table,
    scale_probabilities,
)


def top_class_case(confidence: float, n: int, n_correct: int) -> tuple[np.ndarray, np.ndarray]:
    """n images all predicted class 0 with `confidence`; the first n_correct truly are 0."""
    probabilities = np.tile([confidence, (1 - confidence) / 2, (1 - confidence) / 2], (n, 1))
    y_true = np.array([0] * n_correct + [1] * (n - n_correct))
    return y_true, probabilities


def test_ece_is_zero_when_accuracy_equals_confidence_in_every_bin():
    # 80 % confident and right 8 times in 10; 60 % confident and right 6 times in 10.
    high = top_class_case(0.8, 10, 8)
    low = top_class_case(0.6, 10, 6)
    y_true = np.concatenate([high[0], low[0]])
    probabilities = np.concatenate([high[1], low[1]])
    assert expected_calibration_error(y_true, probabilities, 10) == pytest.approx(0.0, abs=1e-12)
    table = reliability_table(y_true, probabilities, 10)
    assert table["count"].tolist() == [10, 10]
    assert np.allclose(table["accuracy"], table["confidence"])


def test_ece_is_large_for_an_over_confident_model():
    y_true, probabilities = top_class_case(0.99, 20, 10)  # 99 % sure, right half the time
    assert expected_calibration_error(y_true, probabilities, 15) == pytest.approx(0.49)


def test_temperature_scaling_recovers_the_over_confidence_factor():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 3))
    y_true = np.array([rng.choice(3, p=p) for p in softmax(true_logits, axis=1)])
    over_confident = 3.0 * true_logits  # a model 3x too sure of itself
    temperature = fit_temperature(over_confident, y_true)
    assert 2.6 < temperature < 3.4
    before = softmax(over_confident, axis=1)
    after = scale_probabilities(before, temperature)
    assert np.allclose(after, softmax(over_confident / temperature, axis=1), atol=1e-9)
    assert (after.argmax(1) == before.argmax(1)).all()  # T never changes the prediction
    summary_before = calibration_summary(y_true, before, 15)
    summary_after = calibration_summary(y_true, after, 15)
    assert summary_after["ece"] < summary_before["ece"] / 3
    assert summary_after["nll"] < summary_before["nll"]

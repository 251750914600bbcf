"""Calibration: expected calibration error, reliability tables and temperature scaling.

ECE (Guo et al., 2017) bins test images by their top-class confidence into equal-width bins
and averages |accuracy - confidence| over bins, weighted by the bin's share of images.
Temperature scaling divides the logits by one scalar T > 0, fitted by minimising the negative
log-likelihood on the *validation* split; it never changes the predicted class.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import log_loss


def _bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index per image for equal-width bins over (0, 1]; confidence 1.0 is in the last."""
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def reliability_table(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int) -> pd.DataFrame:
    """Per non-empty confidence bin: mean confidence, accuracy and image count."""
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == y_true).astype(float)
    frame = pd.DataFrame({"bin": _bins(confidence, n_bins), "c": confidence, "ok": correct})
    table = frame.groupby("bin").agg(
        confidence=("c", "mean"), accuracy=("ok", "mean"), count=("ok", "size")
    )
    table = table.reset_index()
    table["bin_low"] = table["bin"] / n_bins
    table["bin_high"] = (table["bin"] + 1) / n_bins
    return table[["bin_low", "bin_high", "confidence", "accuracy", "count"]]


def expected_calibration_error(
    y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = 15
) -> float:
    """Σ_bins (n_b / N) · |accuracy_b − confidence_b| over top-class confidence bins."""
    table = reliability_table(y_true, probabilities, n_bins)
    weights = table["count"] / len(y_true)
    return float((weights * (table["accuracy"] - table["confidence"]).abs()).sum())


def scale_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): equal to softmax(logits / T), so the predictions file suffices."""
    logs = np.log(np.clip(probabilities, 1e-300, None))
    return softmax(logs / temperature, axis=1)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The T that minimises the NLL of softmax(logits / T) (searched over log T)."""

    def nll(log_t: float) -> float:
        log_p = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-log_p[np.arange(len(y_true)), y_true].mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def calibration_summary(
    y_true: np.ndarray, probabilities: np.ndarray, n_bins: int
) -> dict[str, float]:
    """ECE, NLL and multi-class Brier score of one set of probabilities."""
    labels = list(range(probabilities.shape[1]))
    onehot = np.eye(len(labels))[y_true]
    return {
        "ece": round(expected_calibration_error(y_true, probabilities, n_bins), 6),
        "nll": round(float(log_loss(y_true, probabilities, labels=labels)), 6),
        "brier": round(float(((probabilities - onehot) ** 2).sum(1).mean()), 6),
    }

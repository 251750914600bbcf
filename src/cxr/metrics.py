"""Test-split metrics, computed with scikit-learn, with seeded bootstrap confidence intervals.

Conventions (scikit-learn's): a confusion matrix has true classes in rows and predicted classes
in columns; precision of class k is cm[k, k] / column k, recall is cm[k, k] / row k.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _r(value: float) -> float:
    """Round for stable, readable JSON (and `dvc metrics diff`)."""
    return round(float(value), 6)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    return float(
        f1_score(y_true, y_pred, labels=range(n_classes), average="macro", zero_division=0)
    )


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    metric: MetricFn,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, float]:
    """Percentile bootstrap interval of `metric` over resampled test images (seeded)."""
    if resamples == 0:
        return {}
    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws = rng.integers(0, n, size=(resamples, n))
    values = np.array([metric(y_true[idx], y_pred[idx]) for idx in draws])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return {"low": _r(low), "high": _r(high)}


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: tuple[str, ...],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Accuracy, macro/weighted and per-class precision, recall, F1, with bootstrap CIs."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        averages[average] = {"precision": _r(p), "recall": _r(r), "f1": _r(f)}

    def macro(t: np.ndarray, p: np.ndarray) -> float:
        return macro_f1(t, p, len(classes))

    return {
        "test_images": len(y_true),
        "accuracy": _r(accuracy_score(y_true, y_pred)),
        "accuracy_ci": bootstrap_ci(y_true, y_pred, accuracy_score, resamples, confidence, seed),
        "balanced_accuracy": _r(balanced_accuracy_score(y_true, y_pred)),
        **averages,
        "macro_f1_ci": bootstrap_ci(y_true, y_pred, macro, resamples, confidence, seed),
        "confidence_level": confidence,
        "per_class": {
            name: {
                "precision": _r(precision[k]),
                "recall": _r(recall[k]),
                "f1": _r(f1[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(classes)
        },
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts; rows are true classes, columns predicted classes."""
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def predictions_frame(
    files: list[str], y_true: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]
) -> pd.DataFrame:
    """One row per test image: `actual`, `predicted` and one probability column per class,
    enough to recompute every metric (and what DVC's confusion plot reads)."""
    frame = pd.DataFrame(
        {
            "image": files,
            "actual": [classes[k] for k in y_true],
            "predicted": [classes[k] for k in probabilities.argmax(1)],
        }
    )
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = np.round(probabilities[:, k], 6)
    return frame

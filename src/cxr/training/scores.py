"""The validation scores an epoch is kept by (`train.select_by`); the test report
(`cxr.evaluation.metrics`) and its bootstrap intervals use the same definitions.

They are scikit-learn's (`accuracy_score`, macro `recall_score` over the classes present,
macro `f1_score` with `zero_division=0`), computed from one `np.bincount` confusion matrix:
scikit-learn checks its inputs on every call (~2 ms), and a bootstrap interval calls a metric
once per resample, thousands of times per report. tests/training/test_scores.py holds them
equal to scikit-learn's on random and tied inputs.
"""

from __future__ import annotations

import numpy as np


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, true classes in rows and predicted ones in columns
    (scikit-learn's `confusion_matrix` with labels 0..n_classes-1)."""
    cells = n_classes * np.asarray(y_true, np.int64) + np.asarray(y_pred, np.int64)
    return np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of images predicted right."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in `y_true`: scikit-learn's balanced accuracy,
    without its warning when a prediction names a class the (resampled) truth lacks."""
    n_classes = int(max(np.max(y_true), np.max(y_pred))) + 1
    counts = confusion_counts(y_true, y_pred, n_classes)
    true_sum = counts.sum(axis=1)
    present = true_sum > 0
    return float(np.mean(np.diag(counts)[present] / true_sum[present]))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean F1 over classes 0..n_classes-1; 0 for a class neither true nor
    predicted."""
    counts = confusion_counts(y_true, y_pred, n_classes)
    denominator = (counts.sum(axis=1) + counts.sum(axis=0)).astype(np.float64)
    f1 = np.divide(
        2.0 * np.diag(counts), denominator, out=np.zeros(n_classes), where=denominator > 0
    )
    return float(np.mean(f1))

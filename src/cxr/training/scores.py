"""The validation scores an epoch is kept by (`train.select_by`); the test report
(`cxr.evaluation.metrics`) uses the same definitions."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, recall_score


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    return float(
        f1_score(y_true, y_pred, labels=range(n_classes), average="macro", zero_division=0)
    )


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in `y_true`: scikit-learn's balanced accuracy,
    without its warning when a prediction names a class the (resampled) truth lacks."""
    present = np.unique(y_true)
    return float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0))

"""The scores equal scikit-learn's, to the bit, on random, tied and class-missing inputs: the
bootstrap computes them by bincount for speed, and every reported number rests on them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from cxr.training.scores import accuracy, balanced_accuracy, confusion_counts, macro_f1


def cases(count: int = 400):
    """(y_true, y_pred, n_classes): 1-150 images of 2-5 classes, a third of them with classes
    missing from the truth or from the predictions (as bootstrap resamples have)."""
    rng = np.random.default_rng(7)
    for i in range(count):
        n_classes = int(rng.integers(2, 6))
        size = int(rng.integers(1, 150))
        high = n_classes if i % 3 else max(1, n_classes - 2)  # some classes never drawn
        yield rng.integers(0, high, size), rng.integers(0, n_classes, size), n_classes


def test_confusion_counts_is_scikit_learns_confusion_matrix() -> None:
    for y_true, y_pred, n_classes in cases():
        expected = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
        np.testing.assert_array_equal(confusion_counts(y_true, y_pred, n_classes), expected)


def test_accuracy_balanced_accuracy_and_macro_f1_are_scikit_learns_to_the_bit() -> None:
    for y_true, y_pred, n_classes in cases():
        present = np.unique(y_true)
        assert accuracy(y_true, y_pred) == accuracy_score(y_true, y_pred)
        assert balanced_accuracy(y_true, y_pred) == recall_score(
            y_true, y_pred, labels=present, average="macro", zero_division=0
        )
        assert macro_f1(y_true, y_pred, n_classes) == f1_score(
            y_true, y_pred, labels=range(n_classes), average="macro", zero_division=0
        )


def test_balanced_accuracy_ignores_predicted_classes_the_truth_lacks() -> None:
    # truth has classes 0 and 1 only; a prediction of 2 is a miss, not a third recall of 0
    assert balanced_accuracy(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])) == pytest.approx(
        (1 / 2 + 1) / 2
    )

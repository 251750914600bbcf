"""External folders (evaluate.external): indexed against the model's classes, refused with the
folder named, and scored over the classes they hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from cxr.core.config import DataConfig, EvaluateConfig
from cxr.core.errors import DataError
from cxr.evaluation.external import external_images, present_metrics
from tests.helpers.sources import linked_subset

CLASSES = ("COVID", "Normal", "Pneumonia")


def test_a_folder_with_some_classes_is_indexed_with_its_metadata(
    mix_data: Path, tmp_path: Path
) -> None:
    folder = linked_subset(mix_data, tmp_path / "hannover", lambda m: m["source"] == "hannover")
    images = external_images(folder, CLASSES, DataConfig())
    assert len(images.files) == 70 and set(images.labels) == {0}
    assert set(images.metadata["source"]) == {"hannover"}
    assert images.metadata["patient"].str.startswith("hannover:").all()


def test_a_class_the_model_lacks_or_a_missing_folder_is_refused_by_name(
    real_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match=r"evaluate\.external: .*'Pneumonia'.*model does not"):
        external_images(real_data, ("COVID", "Normal"), DataConfig())
    with pytest.raises(DataError, match=r"evaluate\.external: .*nowhere is not a folder"):
        external_images(tmp_path / "nowhere", CLASSES, DataConfig())


def test_metrics_are_over_the_classes_present() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice([0, 2], 120)  # no Normal image
    probabilities = rng.dirichlet(np.ones(3), 120)
    probabilities[y == 2, 2] += 0.5
    probabilities /= probabilities.sum(1, keepdims=True)
    report = present_metrics(
        y, probabilities, CLASSES, EvaluateConfig(bootstrap_resamples=200), np.arange(120)
    )
    predicted = probabilities.argmax(1)
    assert report["classes_present"] == ["COVID", "Pneumonia"]
    assert set(report["per_class"]) == {"COVID", "Pneumonia"}
    # scikit-learn's balanced accuracy over the true classes (predictions of Normal count wrong)
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert report["per_class"]["Pneumonia"]["roc_auc"] == pytest.approx(
        roc_auc_score(y == 2, probabilities[:, 2]), abs=1e-6
    )
    assert sum(report["predicted"].values()) == 120
    low, high = report["balanced_accuracy_ci"]["low"], report["balanced_accuracy_ci"]["high"]
    assert low <= report["balanced_accuracy"] <= high
    one_class = present_metrics(np.zeros(5, int), np.eye(3)[[0, 0, 1, 0, 2]], CLASSES,
                                EvaluateConfig(bootstrap_resamples=0), np.arange(5))  # fmt: skip
    assert one_class["balanced_accuracy"] == pytest.approx(0.6)
    assert one_class["per_class"]["COVID"]["roc_auc"] is None  # undefined with one class

"""benchmarks/select_recipe.py: the per-source breakdown of out-of-fold predictions, checked
against scikit-learn on each source's rows with cxrmix's real metadata; and the shortest
early-stopping patience that keeps a run's weights, checked against the training loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, recall_score

from cxr.core.config import TrainConfig
from cxr.training.loop import fit
from cxr.training.models import build_model
from cxr.training.state import FitResult
from tests.helpers.benchmarks import load_benchmark
from tests.helpers.train_project import tiny_cfg, tiny_set


# scikit-learn's own warning for the reference score of a one-class source
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_per_source_matches_scikit_learn_within_each_source(tmp_path: Path, mix_data: Path) -> None:
    manifest = pd.read_csv(mix_data / "manifest.csv", keep_default_na=False, dtype=str)
    # metadata.csv as the download stage writes it: `file` is `<Class>/<name>`
    keys = manifest["file"].str.replace("/images/", "/", regex=False)
    pd.DataFrame({"file": keys, "source": manifest["source"]}).to_csv(
        tmp_path / "metadata.csv", index=False
    )
    classes = tuple(sorted(manifest["class"].unique()))
    truth = manifest["class"].map(classes.index).to_numpy()
    rng = np.random.default_rng(0)
    predicted = np.where(rng.random(len(truth)) < 0.6, truth, rng.integers(0, 3, len(truth)))
    files = tuple(Path("split/train") / key for key in keys)

    result = load_benchmark("select_recipe").per_source(tmp_path, files, truth, predicted, classes)

    assert set(result) == set(manifest["source"])
    assert sum(row["images"] for row in result.values()) == len(truth)
    for source, row in result.items():
        rows = (manifest["source"] == source).to_numpy()
        assert row["images"] == rows.sum()
        expected = balanced_accuracy_score(truth[rows], predicted[rows])
        assert row["balanced_accuracy"] == pytest.approx(expected, abs=1e-6)  # rounded to 6
        present = sorted(set(truth[rows]))
        assert set(row["recall"]) == {classes[k] for k in present}
        recall = recall_score(truth[rows], predicted[rows], labels=present, average=None)
        assert [row["recall"][classes[k]] for k in present] == pytest.approx(list(recall), abs=1e-6)
    # Hannover, all COVID, scores its recall, not an average with classes it lacks
    assert set(result["hannover"]["recall"]) == {"COVID"}
    for source in [s for s, row in result.items() if len(row["recall"]) == 1]:
        assert result[source]["balanced_accuracy"] == next(iter(result[source]["recall"].values()))


def run(cfg: TrainConfig) -> FitResult:
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    return fit(model, tiny_set(), tiny_set(6, seed=1), cfg, 1e-2, torch.device("cpu"))


def test_patience_keeping_is_the_shortest_early_stop_that_keeps_the_full_runs_weights() -> None:
    cfg = tiny_cfg(epochs=10)
    full = run(cfg)
    patience = load_benchmark("select_recipe").patience_keeping(full.history, cfg.select_by)
    assert patience >= 2, [s.as_dict() for s in full.history]  # so that a shorter one exists

    kept = run(dataclasses.replace(cfg, early_stopping_patience=patience))
    assert kept.best_epoch == full.best_epoch
    assert len(kept.history) == min(cfg.epochs, full.best_epoch + patience)
    assert kept.best_state.keys() == full.best_state.keys()
    assert all(torch.equal(kept.best_state[k], full.best_state[k]) for k in full.best_state)

    shorter = run(dataclasses.replace(cfg, early_stopping_patience=patience - 1))
    assert shorter.best_epoch < full.best_epoch
    assert len(shorter.history) == shorter.best_epoch + patience - 1  # stopped, waiting no longer

"""benchmarks/select_recipe.py: the per-source breakdown of out-of-fold predictions, checked
against scikit-learn on each source's rows with cxrmix's real metadata; and the shortest
early-stopping patience that keeps a run's weights, checked against the training loop; and a
fold's augmented training part, built from real X-rays, holding none of the held-out films; and
the folds' training seeds."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, recall_score

from cxr.core.config import TrainConfig
from cxr.training.loop import fit
from cxr.training.models import build_model
from cxr.training.pixels import PixelSet
from cxr.training.state import FitResult
from tests.helpers.benchmarks import load_benchmark
from tests.helpers.project import project_params, tree_hashes
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


def test_augmented_fold_is_grown_from_its_own_rows_only(
    tmp_path: Path, real_images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "pixels"))
    overrides = {"augment.target": 2.0, "train.image_size": 48}
    params = load_benchmark("real_recipes").with_overrides(project_params(), overrides)
    classes = tuple(sorted({path.parents[1].name for path in real_images}))
    labels = [classes.index(path.parents[1].name) for path in real_images]
    empty = torch.zeros(len(real_images), 1, 48, 48, dtype=torch.uint8)  # not read
    pool = PixelSet(classes, tuple(real_images), empty, torch.tensor(labels))
    rows = np.array([i for i in range(len(real_images)) if i % 3 != 2])  # one film per class out
    per_class = Counter(labels[i] for i in rows)

    train = load_benchmark("select_recipe").augmented(pool, rows, params, tmp_path / "fold")

    grown = round(max(per_class.values()) * 2.0)
    assert train.classes == classes
    assert sorted(train.labels.tolist()) == sorted(k for k in per_class for _ in range(grown))
    assert train.pixels.shape == (len(classes) * grown, 1, 48, 48)
    assert train.pixels.float().std() > 0  # decoded films, not the pool's zeros
    manifest = pd.read_csv(tmp_path / "fold" / "augmented" / "manifest.csv")
    kept = {real_images[i].name for i in rows}
    assert {name.split("/")[1] for name in manifest["source"]} == kept
    # by content: the originals are the fold's films, byte for byte; no held-out film is there
    written = tree_hashes(tmp_path / "fold" / "augmented" / "train")
    originals = {name: digest for name, digest in written.items() if "__aug" not in name}
    held = set(range(len(real_images))) - set(rows)
    held_out = {hashlib.sha256(real_images[i].read_bytes()).hexdigest() for i in held}
    assert len(originals) == len(rows)
    assert not set(written.values()) & held_out


def test_seed_zero_keeps_the_recorded_fold_seeds_and_others_share_none() -> None:
    """`--seed 0` trains folds 0, 1, 2 with seeds 0, 1, 2, as docs/results.md's figures were;
    other seeds give every fold a seed no other run of the same folds uses."""
    fold_seeds = load_benchmark("select_recipe").fold_seeds
    assert fold_seeds(0, 3) == [0, 1, 2]
    runs = [fold_seeds(seed, 3) for seed in range(4)]
    every = [s for run in runs for s in run]
    assert len(set(every)) == len(every), runs

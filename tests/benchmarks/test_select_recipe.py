"""benchmarks/select_recipe.py's per-source breakdown of out-of-fold predictions, checked
against scikit-learn on each source's rows, with cxrmix's real metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score

from tests.helpers.benchmarks import load_benchmark


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

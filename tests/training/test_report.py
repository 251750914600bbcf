"""The train stage's outputs (cxr.training.report) against independent computations: the saved
models/model.pt is the epoch `train.select_by` picks from plots/train_history.csv, recomputed
here, and its weights give that epoch's validation loss (scikit-learn's log loss)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss

from cxr.training.checkpoint import load_checkpoint
from cxr.training.inference import predict_logits
from cxr.training.pixels import load_split
from tests.helpers.train_project import make_project, run_train

pytestmark = pytest.mark.e2e  # runs the train stage for real

# select_by -> the history row it keeps (ties of the accuracy rules: lower val loss)
EXPECTED = {
    "val_loss": lambda h: h["val_loss"].idxmin(),
    "val_balanced_accuracy": lambda h: h.sort_values(
        ["val_balanced_accuracy", "val_loss"], ascending=[False, True]
    ).index[0],
}


@pytest.mark.parametrize("select_by", ["val_balanced_accuracy"])  # the default (CI time)
def test_saved_model_is_the_selected_epoch(tmp_path: Path, select_by: str) -> None:
    root = make_project(
        tmp_path,
        per_class=8,
        epochs=4,
        select_by=select_by,
        model="resnet18",
        weights="none",
    )
    run_train(root)
    history = pd.read_csv(root / "plots/train_history.csv")
    row = EXPECTED[select_by](history)
    epoch = int(history.loc[row, "epoch"])
    metrics = json.loads((root / "metrics/train.json").read_text())
    model, card = load_checkpoint(root / "models/model.pt")
    assert metrics["best_epoch"] == card.epoch == epoch, history
    val = load_split(root / "data/split/val", card.image_size, card.classes, card.prep)
    logits = predict_logits(model, card.arch, val.pixels, 8, torch.device("cpu"))
    probabilities = torch.softmax(logits.double(), 1).numpy()
    loss = log_loss(val.labels.numpy(), probabilities, labels=list(range(len(card.classes))))
    assert loss == pytest.approx(history.loc[row, "val_loss"], abs=1e-4)
    # the check can tell epochs apart: no other epoch had this validation loss
    others = history.drop(index=row)["val_loss"].to_numpy()
    assert np.abs(others - loss).min() > 1e-4, history

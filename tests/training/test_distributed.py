"""Two-process DDP on CPU (gloo) through torchrun, as users run it."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.train_project import PROJECT, make_project, run_train


@pytest.mark.e2e  # runs a stage for real (README: the slow part)
@pytest.mark.parametrize(
    "train",
    [{}, {"ema_decay": 0.5, "mixup_alpha": 0.4}],  # each rank averages and mixes on its own
    ids=["plain", "ema_mixup"],
)
def test_two_rank_ddp_trains_identically_and_only_rank_0_writes(
    tmp_path: Path, train: dict
) -> None:
    epochs = 2
    root = make_project(tmp_path / "p", per_class=4, epochs=epochs, **train)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    log = run_train(root, [*torchrun, "--nproc_per_node", "2", str(PROJECT / "stages/train.py")])
    # the stage compares a fingerprint of every rank's trained and saved weights and fails on
    # a mismatch
    assert "on cpu x2" in log and "saved weights" in log
    assert log.count("train: best epoch") == 1  # only rank 0 reports
    history = pd.read_csv(root / "plots/train_history.csv")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    assert (root / "models/model.pt").is_file()
    with sqlite3.connect(root / "mlflow.db") as db:
        runs = db.execute("select count(*) from runs").fetchone()[0]
        steps = db.execute(
            "select step from metrics where key = 'val/loss' order by step"
        ).fetchall()
    assert runs == 1  # rank 1 never opened MLflow
    assert [step for (step,) in steps] == list(range(1, epochs + 1))

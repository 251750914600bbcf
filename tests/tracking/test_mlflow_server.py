"""A tracking server that dies in the middle of training: training completes, DVC metrics are
written, and what could not be logged is reported at the end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers.project import restore, set_params, tool_env
from tests.helpers.servers import mlflow_server, stop, wait_for

pytestmark = pytest.mark.e2e


def test_server_killed_during_training(baseline: dict, tmp_path: Path) -> None:
    project = restore(baseline["project"])  # the session's tiny run: only train re-runs
    # Several epochs, so that training goes on well after the first epoch's history appears.
    set_params(project, {"train.epochs": 6, "train.scheduler": "none"})
    history = project / "plots" / "train_history.csv"
    history.unlink()  # the committed one must not count as "training has started"
    store = tmp_path / "server"
    store.mkdir()
    with mlflow_server(f"sqlite:///{store / 'mlflow.db'}", store / "art", store / "log") as (
        base,
        server,
    ):
        pipeline = subprocess.Popen(
            ["dvc", "repro", "train"],
            cwd=project,
            env=tool_env(MLFLOW_TRACKING_URI=base),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: history.is_file() or pipeline.poll() is not None, 600, "the first epoch")
        assert pipeline.poll() is None, "training ended before the server could be stopped"
        stop(server)
        out, err = pipeline.communicate(timeout=600)
    assert pipeline.returncode == 0, f"{out}\n{err}"
    summary = json.loads((project / "metrics" / "train.json").read_text())
    assert summary["epochs_run"] == 6
    assert len(history.read_text().splitlines()) == 1 + 6
    assert (project / "models" / "model.pt").is_file()
    assert "logging call(s) of stage 'train' failed and are missing" in err, err
    assert "model (mlflow.pytorch.log_model)" in err

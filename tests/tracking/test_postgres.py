"""The team setup: a real `mlflow server` on a real PostgreSQL database, a pipeline stage
logging to it through MLFLOW_TRACKING_URI, the run read back through the REST API."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.helpers.project import TINY_PARAMS, restore, run
from tests.helpers.servers import as_dict, mlflow_server, postgres_server, search_runs

pytestmark = pytest.mark.e2e


def local_runs(project: Path) -> int:
    with sqlite3.connect(project / "mlflow.db") as db:
        return db.execute("select count(*) from runs").fetchone()[0]


def test_pipeline_logs_to_mlflow_server_on_postgres(baseline: dict, tmp_path: Path) -> None:
    # The session's tiny pipeline run; its evaluate stage re-run against the server.
    project = restore(baseline["project"])
    before = local_runs(project)
    with (
        postgres_server(tmp_path / "pg") as database,
        mlflow_server(database, tmp_path / "artifacts", tmp_path / "mlflow.log") as (base, _),
    ):
        run(
            ["dvc", "repro", "--force", "--single-item", "evaluate"],
            project,
            MLFLOW_TRACKING_URI=base,
        )
        (found,) = search_runs(base, "cxr-classification")
    assert local_runs(project) == before  # nothing went to the project's local store
    params, metrics = as_dict(found["data"]["params"]), as_dict(found["data"]["metrics"])
    accuracy = json.loads((project / "metrics" / "eval.json").read_text())["accuracy"]
    assert float(params["lr"]) == TINY_PARAMS["lr"]
    assert metrics["test/accuracy"] == pytest.approx(accuracy)
    assert found["info"]["status"] == "FINISHED"

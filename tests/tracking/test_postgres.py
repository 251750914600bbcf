"""The team setup: a real `mlflow server` on a real PostgreSQL database, the pipeline logging to
it through MLFLOW_TRACKING_URI, the run read back through the REST API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.project import TINY_PARAMS, copy_project, git_commit, run, set_params
from tests.helpers.servers import as_dict, mlflow_server, postgres_server, search_runs

pytestmark = pytest.mark.e2e


def test_pipeline_logs_to_mlflow_server_on_postgres(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    set_params(project, TINY_PARAMS)
    git_commit(project, "tiny params")
    with (
        postgres_server(tmp_path / "pg") as database,
        mlflow_server(database, tmp_path / "artifacts", tmp_path / "mlflow.log") as (base, _),
    ):
        run(["dvc", "repro", "evaluate"], project, MLFLOW_TRACKING_URI=base)
        (found,) = search_runs(base, "cxr-classification")
    assert not (project / "mlflow.db").exists()  # nothing went to the local default store
    params, metrics = as_dict(found["data"]["params"]), as_dict(found["data"]["metrics"])
    accuracy = json.loads((project / "metrics" / "eval.json").read_text())["accuracy"]
    assert float(params["lr"]) == TINY_PARAMS["lr"]
    assert metrics["test/accuracy"] == pytest.approx(accuracy)
    assert found["info"]["status"] == "FINISHED"

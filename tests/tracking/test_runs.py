"""Tracking without the pipeline: store resolution, provenance tags, fault handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from cxr.core import layout
from cxr.core.config import Params, TrackingConfig
from cxr.tracking import runs as tracking
from tests.helpers.servers import free_port


def test_project_root_leaves_dvc_experiment_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12"
    workspace.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    assert layout.project_root() == (tmp_path / "proj").resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "proj"))
    assert layout.project_root() == (tmp_path / "proj").resolve()


def test_data_version_reads_dvc_lock(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "download": {"outs": [{"path": "data/raw", "md5": "aa.dir"}]},
                    "split": {"outs": [{"path": "data/split", "md5": "bb.dir"}]},
                },
            }
        )
    )
    assert tracking.data_version(lock) == {
        "cxr.data.raw_md5": "aa.dir",
        "cxr.data.split_md5": "bb.dir",
    }
    assert tracking.data_version(tmp_path / "absent.lock") == {}


def _params(required: bool) -> Params:
    return Params(tracking=TrackingConfig(required=required, experiment="t"))


def test_unreachable_server_fails_at_start_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    entered = []
    with (
        pytest.raises(tracking.TrackingUnavailableError, match=r"tracking\.required: false"),
        tracking.pipeline_run("train", _params(required=True)),
    ):
        entered.append(True)
    assert not entered  # no work started


def test_unreachable_server_message_hides_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 16, case 3: the "unreachable" error printed MLFLOW_TRACKING_URI with its password.
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")  # recorded, so what the stage sets is undone after
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ops:hunter2@127.0.0.1:{free_port()}")
    with (
        pytest.raises(tracking.TrackingUnavailableError) as caught,
        tracking.pipeline_run("train", _params(required=True)),
    ):
        pass
    assert "is unreachable" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    # MLflow gets the credentials from its own variables, never in a URI it could print; the
    # settings last while the stage talks to MLflow and are undone after.
    with tracking.mlflow_environment(os.environ["MLFLOW_TRACKING_URI"]) as uri:
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "hunter2"
        assert "hunter2" not in os.environ["MLFLOW_TRACKING_URI"]
        assert "hunter2" not in uri
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ


def test_unreachable_server_only_warns_when_tracking_optional(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with tracking.pipeline_run("train", _params(required=False)) as run:
        run.log_metrics({"x": 1.0})
        assert not run.enabled
    assert "Continuing untracked" in capsys.readouterr().err


def test_local_store_logs_tags_and_reports_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "my-exp")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "c0ffee")
    with tracking.pipeline_run("train", _params(required=True)) as run:
        run.log_metrics({"val_loss": 0.5}, step=1)
        run.log_artifact(tmp_path / "missing-is-skipped.txt")
        run._guard("a failing call", lambda: 1 / 0)
        run.log_metrics({"after": 1.0})  # inside the cool-down: recorded as missing
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert found.info.run_name == "my-exp"
    assert found.data.tags["cxr.baseline_rev"] == "c0ffee"
    assert found.data.tags["cxr.dvc_exp"] == "my-exp"
    assert found.data.metrics["val_loss"] == 0.5
    assert "after" not in found.data.metrics
    out, err = capsys.readouterr()
    # the direct link to the run's page (the page tests/tracking/test_mlflow_page.py opens)
    page = f"#/experiments/{found.info.experiment_id}/runs/{found.info.run_id}"
    assert f"mlflow: train logged to run {found.info.run_id}: `mlflow ui`, then " in out
    assert out.rstrip().endswith(f"http://127.0.0.1:5000/{page}"), out
    # the failing call, the metric in the cool-down and the stage's record that followed it
    assert "3 logging call(s) of stage 'train' failed" in err
    assert "ZeroDivisionError" in err and "1 metrics (step None): skipped" in err

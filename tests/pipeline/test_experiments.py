"""DVC experiments and MLflow at team scale, on the session's tiny pipeline run (a temporary
git+DVC copy of the project, `baseline`, tests/conftest.py): the MLflow server over the project's
store, the push/pull round trip, the queue, `dvc exp run -S lr=…` with `dvc metrics diff`,
`exp apply`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers.project import (
    AFTER_TRAIN,
    TINY_PARAMS,
    git_commit,
    lock_outs,
    restore,
    run,
    stages_run,
)
from tests.helpers.servers import as_dict, mlflow_server, search_runs, wait_for

pytestmark = pytest.mark.e2e

EXPERIMENT = "cxr-classification"
# Two experiments, run side by side by two queue workers (one per core on CI's machines).
QUEUED_LRS = {"lr-2e-3": 0.002, "lr-1e-2": 0.01}


@pytest.fixture(scope="module")
def project(baseline: dict) -> Path:
    """The session's tiny pipeline run (`baseline`, tests/conftest.py), at its committed state;
    the tests here add experiments, a remote and runs on top of it."""
    return restore(baseline["project"])


@pytest.fixture(scope="module")
def server(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on loopback over the project's own store."""
    log = tmp_path_factory.mktemp("server") / "mlflow.log"
    with mlflow_server(f"sqlite:///{project / 'mlflow.db'}", project / "mlartifacts", log) as (
        base,
        _,
    ):
        yield base


def test_server_over_project_store_finds_the_pipeline_run(project: Path, server: str) -> None:
    # The first run in the store (other tests add experiments' runs after it).
    found = min(search_runs(server, EXPERIMENT), key=lambda r: r["info"]["start_time"])
    assert found["info"]["run_name"].startswith("repro-"), found["info"]
    params, metrics, tags = (
        as_dict(found["data"].get(key, [])) for key in ("params", "metrics", "tags")
    )
    eval_json = json.loads((project / "metrics" / "eval.json").read_text())
    assert float(params["lr"]) == TINY_PARAMS["lr"]
    assert params["train.image_size"] == str(TINY_PARAMS["train.image_size"])
    assert metrics["test/accuracy"] == pytest.approx(eval_json["accuracy"])
    assert {"train/loss", "val/loss", "val/accuracy", "train/best_epoch"} <= set(metrics)
    assert tags["cxr.data.raw_md5"] == lock_outs(project)["data/raw"]
    assert tags["cxr.data.split_md5"] == lock_outs(project)["data/split"]
    base = run(["git", "rev-list", "-n1", "--grep=tiny params", "HEAD"], project).stdout.strip()
    assert tags["cxr.baseline_rev"] == base
    assert all(tags[f"cxr.stage.{s}"] == "done" for s in AFTER_TRAIN)
    deferral = json.loads((project / "reports" / "deferral.json").read_text())
    assert metrics["deferral/test/coverage"] == pytest.approx(deferral["test"]["coverage"])
    assert "test/gradcam/faithfulness/methods/lime/deletion_auc/mean" in metrics


def test_model_is_logged_with_signature_and_loads(project: Path, server: str) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    run_id = search_runs(server, EXPERIMENT)[0]["info"]["run_id"]
    mlflow.set_tracking_uri(server)
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert info.signature is not None
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"][1:] == (3, 32, 32)
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    classes = [p for p in (project / "data" / "raw").iterdir() if p.is_dir()]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, len(classes))


def test_push_then_pull_in_fresh_clone_restores_everything(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    remote = tmp_path_factory.mktemp("remote") / "store"
    run(["dvc", "remote", "add", "-d", "team", str(remote)], project)
    git_commit(project, "dvc remote")
    run(["dvc", "push"], project)
    clone = tmp_path_factory.mktemp("clone") / "project"
    run(["git", "clone", "-q", str(project), str(clone)], project.parent)
    assert not (clone / "models" / "model.pt").exists()
    run(["dvc", "pull"], clone)
    for path in ("models/model.pt", "data/manifest.csv"):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path
    assert sorted(p.name for p in (clone / "data/raw/COVID").iterdir()) == sorted(
        p.name for p in (project / "data/raw/COVID").iterdir()
    )
    status = run(["dvc", "status"], clone).stdout
    assert "up to date" in status, status
    repro = run(["dvc", "repro"], clone).stdout
    assert "Running stage" not in repro, repro


def queue_settled(project: Path) -> bool:
    """True once no queued experiment is waiting or running."""
    status = subprocess.run(
        ["dvc", "queue", "status"], cwd=project, capture_output=True, text=True, check=False
    ).stdout
    return not any(word in status for word in ("Queued", "Running"))


@pytest.fixture(scope="module")
def queued(project: Path) -> str:
    """The QUEUED_LRS experiments, run by two queue workers side by side; `dvc queue status`
    once they settled. A fixture, so a test that needs them does not depend on test order."""
    # Two jobs at once on CI's 2 cores: one pinned thread each, or they oversubscribe
    # (docs/experiments.md).
    for name, lr in QUEUED_LRS.items():
        queued = ["-n", name, "-S", f"lr={lr}", "-S", "train.threads=1"]
        # Up to evaluate, as the sweeps of docs/results.md do: the metrics compared below.
        run(["dvc", "exp", "run", "--queue", *queued, "evaluate"], project)
    run(["dvc", "queue", "start", "-j", "2"], project)
    wait_for(lambda: queue_settled(project), 900, "the DVC queue to finish")
    status = run(["dvc", "queue", "status"], project).stdout
    run(["dvc", "queue", "stop", "--kill"], project)
    return status


def test_queue_runs_experiments_side_by_side_into_the_project_store(
    project: Path, server: str, queued: str
) -> None:
    assert queued.count("Success") == len(QUEUED_LRS), queued

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    names = {
        exp["name"]
        for baseline in shown
        for experiment in baseline.get("experiments") or []
        for exp in experiment.get("revs", [])
    }
    assert set(QUEUED_LRS) <= names, names

    by_name = {r["info"]["run_name"]: r for r in search_runs(server, EXPERIMENT)}
    for name, lr in QUEUED_LRS.items():
        assert name in by_name, sorted(by_name)
        params = as_dict(by_name[name]["data"]["params"])
        metrics = as_dict(by_name[name]["data"]["metrics"])
        assert float(params["lr"]) == lr
        assert {"test/accuracy", "test/macro/f1"} <= set(metrics)
        assert as_dict(by_name[name]["data"]["tags"])["cxr.dvc_exp"] == name
    # Nothing landed in the temporary workspaces' own stores.
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))


def test_exp_run_lr_then_metrics_diff_lists_changes(
    project: Path, server: str, queued: str
) -> None:
    # `queued`: the --only-changed column count below is read with the queue's experiments
    done = run(["dvc", "exp", "run", "-S", "lr=0.001"], project)
    # `params` validates the new value first; its output is constant, so it re-runs nothing
    assert stages_run(done.stdout) == ["params", *AFTER_TRAIN]
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    changed = {
        (path, key)
        for path, metrics in diff.items()
        for key, change in metrics.items()
        if change.get("diff")
    }
    assert {("metrics/eval.json", "accuracy"), ("metrics/eval.json", "macro_f1")} & changed, diff
    assert any(path == "metrics/train.json" for path, _ in changed), diff
    assert all(diff[path][key]["old"] != diff[path][key]["new"] for path, key in changed)
    params_diff = json.loads(run(["dvc", "params", "diff", "--json"], project).stdout)
    lr_change = params_diff["params.yaml"]["lr"]
    assert (lr_change["old"], lr_change["new"]) == (0.003, 0.001)
    plots = run(["dvc", "plots", "diff", "--json"], project).stdout
    assert "Loss per epoch" in plots
    # Readable: only what differs between the experiments.
    columns = run(["dvc", "exp", "show", "--only-changed", "--csv"], project).stdout
    # issue 13: at most 40 columns in the table a person reads, where DVC merges the CSV's
    # `rev` and `typ` into `Experiment`. The headline metrics no longer carry the accuracy and
    # macro-F1 intervals, Cohen's kappa, the temperature-scaled ECE or the deferral risks
    # (reports/ keeps them). The session's experiments also differ in train.threads (the
    # queue's) and so in the environment hash, which a plain `-S lr=0.001` would not add.
    header = columns.splitlines()[0].split(",")
    shown = [column for column in header if column not in ("rev", "typ")]
    print(f"dvc exp show --only-changed: {len(shown)} columns: {shown}")
    assert len(shown) <= 40, shown

    latest = search_runs(server, EXPERIMENT)
    assert any(as_dict(r["data"]["params"]).get("lr") == "0.001" for r in latest)


def test_exp_apply_restores_a_queued_experiment(project: Path, queued: str) -> None:
    run(["dvc", "exp", "apply", "lr-1e-2"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["lr"] == QUEUED_LRS["lr-1e-2"]
    # Its stages (up to evaluate) match their recorded outputs: nothing to re-run.
    assert run(["dvc", "status", "evaluate"], project).stdout.count("changed") == 0


def test_password_in_tracking_uri_is_never_printed(project: Path, server: str) -> None:
    # issue 16, case 3: MLflow prints the URI it is given ("View run ... at: <uri>") at the
    # end of every stage; the stage hands it the URI without `user:password@`.
    host = server.removeprefix("http://")
    done = run(
        [sys.executable, "stages/evaluate.py"],
        project,
        MLFLOW_TRACKING_URI=f"http://ops:pw-4f1e9c@{host}",
    )
    assert f"at: http://{host}/#/experiments/" in done.stdout  # printed, password-free
    assert "pw-4f1e9c" not in done.stdout + done.stderr

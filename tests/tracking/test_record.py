"""What the stages' results become in MLflow: metric names by split, no counts as metrics,
tables of class counts, datasets with DVC hashes — in a real local MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.core import layout
from cxr.core.config import Params, TrackingConfig
from cxr.tracking import record as run_record


def test_epoch_metrics_are_named_by_split():
    step, metrics = run_record.epoch_metrics(
        {
            "epoch": 3,
            "train_loss": 0.5,
            "val_loss": 0.7,
            "val_macro_f1": 0.6,
            "lr": 1e-3,
            "images_per_second": 90.0,
            "val_balanced_accuracy": 0.61,
        }
    )
    assert step == 3
    assert metrics == {
        "train/loss": 0.5,
        "val/loss": 0.7,
        "val/macro_f1": 0.6,
        "train/lr": 1e-3,
        "train/images_per_second": 90.0,
        "val/balanced_accuracy": 0.61,
    }


def test_report_metrics_leave_out_counts_settings_and_tables():
    report = {
        "accuracy": 0.9,
        "accuracy_ci": {"low": 0.8, "high": 0.95, "resamples": 1000},
        "confidence_level": 0.95,
        "test_images": 88,
        "calibration": {"bins": 15, "uncalibrated": {"ece": 0.02}},
        "per_class": {"COVID": {"f1": 1.0, "support": 16}},
        "layer": "layer2",
    }
    assert run_record.report_metrics(report, "test") == {
        "test/accuracy": 0.9,
        "test/accuracy_ci/low": 0.8,
        "test/accuracy_ci/high": 0.95,
        "test/calibration/uncalibrated/ece": 0.02,
    }
    table = run_record.per_class_table(report)
    assert table.to_dict("records") == [{"class": "COVID", "f1": 1.0, "support": 16}]


def test_stage_records_go_to_a_real_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A run opened at the evaluate stage backfills download/split/augment/train: class counts
    table, series by split, datasets whose digest is dvc.lock's hash; never counts as metrics."""
    from mlflow.tracking import MlflowClient

    from cxr.tracking import runs as tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    for path, data in {
        layout.DOWNLOAD_REPORT: {"classes": {"A": 5, "B": 4}, "masks": {"A": 5, "B": 0}},
        layout.DATA_REPORT: {
            "splits": {"train": {"A": 3, "B": 2}, "val": {"A": 1, "B": 1}, "test": {"A": 1, "B": 1}}
        },
        layout.AUGMENT_REPORT: {"after": {"A": 3, "B": 3}},
        layout.TRAIN_METRICS: {"best_epoch": 2, "val_loss": 0.4, "train_images": 6},
    }.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    layout.PLOTS.mkdir()
    layout.TRAIN_HISTORY.write_text(
        "epoch,train_loss,val_loss,lr\n1,0.9,0.8,0.001\n2,0.5,0.4,0.001\n"
    )
    for split in ("val", "test"):
        for name in ("A", "B"):
            (layout.SPLIT / split / name).mkdir(parents=True)
            (layout.SPLIT / split / name / f"{name}1.png").write_bytes(b"x")
    (layout.AUGMENTED_TRAIN / "A").mkdir(parents=True)
    (layout.AUGMENTED_TRAIN / "A" / "a.png").write_bytes(b"x")
    Path("dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  split:\n    outs:\n    - path: data/split\n"
        "      md5: 0123456789abcdef0123456789abcdef.dir\n"
    )
    params = Params(tracking=TrackingConfig(experiment="t"))
    with tracking.pipeline_run("evaluate", params) as run:
        assert not run.failures, run.failures
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.data.tags["mlflow.source.name"] == "dvc.yaml: evaluate"
    metrics = set(found.data.metrics)
    assert {"train/loss", "val/loss", "train/lr", "train/best_epoch"} <= metrics
    assert not any("images" in name or "classes" in name for name in metrics), metrics
    history = client.get_metric_history(found.info.run_id, "val/loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.8), (2, 0.4)]
    datasets = {d.dataset.name: d for d in found.inputs.dataset_inputs}
    assert set(datasets) == {"train", "val", "test"}  # train and val backfilled
    assert datasets["val"].dataset.digest == "0123456789abcdef0123456789abcdef.dir"
    assert json.loads(datasets["val"].dataset.source) == {"uri": "data/split/val"}
    assert json.loads(datasets["val"].dataset.profile)["num_rows"] == 2
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "data")}
    assert "data/class_counts.csv" in artifacts
    counts = Path(client.download_artifacts(found.info.run_id, "data/class_counts.csv"))
    assert counts.read_text().splitlines()[0] == "class,raw,masks,train,val,test,train_augmented"

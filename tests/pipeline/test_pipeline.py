"""End to end: the real DVC pipeline in a temporary git+DVC copy of the project.

The session's one tiny run (`baseline`, tests/conftest.py) is shared; each test starts from that
committed state (`git checkout` + `dvc checkout`), so the tests don't depend on their order.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers.project import (
    STAGES,
    assert_linked,
    lock_outs,
    metrics_bytes,
    restore,
    run,
    stages_run,
    tool_env,
    tree_hashes,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(baseline: dict) -> Path:
    """The baseline state, restored: committed params and lock, their outputs checked out."""
    return restore(baseline["project"])


def test_repro_runs_all_stages_and_writes_their_outputs(baseline: dict, project: Path) -> None:
    assert stages_run(baseline["output"]) == STAGES
    for out in ["data/raw", "data/split/test", "data/augmented/train", "models/model.pt"]:
        assert (project / out).exists(), out
    # cache.type "hardlink,reflink,copy": new outputs are hard-linked into the cache, so the
    # images passed on unchanged (raw -> split -> augmented originals) are one inode. An
    # augmented output can equal an existing object (every op skipped by its probability);
    # DVC then leaves a copy: see the forced repro's relink.
    assert run(["dvc", "config", "cache.type"], project).stdout.strip().startswith("hardlink")
    assert any("__aug" in name for name in baseline["augmented"])
    assert_linked(project, originals_only=True)
    evaluation = json.loads((project / "reports/eval.json").read_text())
    assert 0.0 <= evaluation["accuracy_ci"]["low"] <= evaluation["accuracy"]
    assert evaluation["accuracy"] <= evaluation["accuracy_ci"]["high"] <= 1.0
    classes = sorted(p.name for p in (project / "data/raw").iterdir())
    assert sorted(evaluation["per_class"]) == classes
    for name in classes:  # a grid of correctly and/or wrongly classified test images per class
        assert list((project / "plots/gradcam/grids").glob(f"{name}_*.png")), name


# What a smoke run may print on stderr: MLflow creating its store, split-folders' copy bar,
# our own progress lines. Anything else (a warning above all) fails the test: fix its cause.
ALLOWED_STDERR = (
    r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.store\.db\.utils: "
    r"(Creating initial MLflow database tables\.\.\.|Updating database tables)",
    r"(INFO  \[alembic\.runtime\.migration\] .*)",
    r"Copying files: .*",
    r"[\w /.:-]+: \d+/\d+ \w+ \(\d+%\), [\d.]+ \w+/s, (\d+|nan) s left",
)


def test_smoke_run_prints_epoch_lines_and_nothing_unexpected(baseline: dict) -> None:
    epochs = re.findall(
        r"^epoch (\d)/2: train loss [\d.]+ acc [\d.]+ \| val loss .* \| [\d.]+ s$",
        baseline["output"],
        re.MULTILINE,
    )
    assert epochs == ["1", "2"], baseline["output"]
    unexpected = [
        line
        for line in baseline["errors"].splitlines()
        if line.strip() and not any(re.fullmatch(pattern, line) for pattern in ALLOWED_STDERR)
    ]
    assert not unexpected, "\n".join(unexpected)


def test_gradcam_stage_prints_where_its_minutes_went(baseline: dict) -> None:
    (line,) = re.findall(r"^gradcam time: (.*)$", baseline["output"], re.MULTILINE)
    listed, total = line.split("; total ")
    parts = {name: float(s) for name, s, _ in (p.rsplit(" ", 2) for p in listed.split(", "))}
    test_images = len(list((baseline["project"] / "data/split/test").rglob("*.png")))
    assert list(parts) == [
        "loading",
        f"Grad-CAM maps ({test_images} images)",
        "overlays",
        "LIME (6 images x 60 samples)",  # TINY_PARAMS' faithfulness.images and num_samples
        "gradcam++/random maps",  # Grad-CAM's own maps are those computed for the overlays
        "faithfulness (6 images x 4 methods x 2 curves x 17 steps)",
        "method figures",
        "logging",
    ], line
    assert sum(parts.values()) <= float(total.removesuffix(" s")) + 0.05 * len(parts), line


def test_exp_show_lists_only_model_metrics(project: Path) -> None:
    table = run(["dvc", "exp", "show", "--csv"], project).stdout.splitlines()[0].split(",")
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    files = set(next(iter(metrics.values()))["data"])
    assert files == {
        "metrics/train.json",
        "metrics/eval.json",
        "metrics/gradcam.json",
        "metrics/deferral.json",
        "metrics/audit.json",
    }
    assert not any(
        column.startswith(("splits.", "classes.", "before.", "after.", "masks."))
        for column in table
    ), table
    metric_columns = [column for column in table if column in _leaves(project, files)]
    assert 0 < len(metric_columns) <= 37, metric_columns
    # was 232; 202 with issue 14's params (preprocess, embeddings, deferral, LIME and
    # faithfulness) and stages (embed, defer); 224 with issue 22's (data.metadata,
    # evaluate.subgroups/age_bands/external, train.top_blocks, five audit.* keys) and its audit
    # stage: params and dependencies (67 of them code files, as dvc.yaml lists each stage's
    # import closure) make up the rest. The readable view is `--only-changed` (≤ 40, in
    # test_experiments).
    assert len(table) < 235, len(table)


def _leaves(project: Path, files: set[str]) -> set[str]:
    """The dotted keys `dvc exp show` makes of the metrics files' leaves."""
    from cxr.tracking.runs import flatten

    return {
        key.replace("/", ".")
        for name in files
        for key in flatten(json.loads((project / name).read_text()))
    }


def test_second_repro_runs_nothing(project: Path) -> None:
    again = run(["dvc", "repro"], project)
    assert stages_run(again.stdout) == []
    assert run(["dvc", "status", "--json"], project).stdout.strip() == "{}"


def test_forced_repro_is_byte_identical(baseline: dict, project: Path) -> None:
    # issue 15: a finished run's resume state made `dvc repro -f train` "resume after the last
    # epoch" and re-save the old model; throughput in the history made its bytes differ.
    assert not (project / "models/checkpoint/last.pt").exists()  # removed once finished
    done = run(["dvc", "repro", "--force"], project)
    assert stages_run(done.stdout) == STAGES
    assert "epoch 2/2" in done.stdout and "resuming" not in done.stdout  # trained anew
    assert metrics_bytes(project) == baseline["metrics"]
    assert "images_per_second" not in (project / "plots/train_history.csv").read_text()
    # Every output the same bytes: the model, the history, the reports, the Grad-CAM figures
    # (issue 23: their PNGs once differed by a few pixels between forced runs; the cause was
    # not traced, and the difference has not been seen since the stage's scoring was batched)
    outs = lock_outs(project)
    differ = sorted(path for path in outs if outs[path] != baseline["outs"].get(path))
    assert not differ, differ
    assert tree_hashes(project / "data" / "augmented") == baseline["augmented"]
    # Outputs identical to cached objects come back as copies (DVC links only new objects);
    # `dvc checkout --relink` turns them back into links, as docs/methods.md says.
    run(["dvc", "checkout", "--relink"], project)
    assert_linked(project)
    assert run(["dvc", "status", "--json"], project).stdout.strip() == "{}"


def test_gradcam_key_reruns_gradcam_only(project: Path) -> None:
    done = run(["dvc", "exp", "run", "-S", "gradcam.images_per_class=2"], project)
    assert stages_run(done.stdout) == ["params", "gradcam"]


def test_params_errors_stop_repro_before_any_output_is_lost(project: Path) -> None:
    # issue 16, cases 5 and 10: DVC deletes a stage's outputs before running it, so a bad
    # value found by the train stage cost the model; a deleted key fell back to a code default
    # and an unknown one was never read. The `params` stage catches all three first.
    original = (project / "params.yaml").read_text()
    outputs = ["models/model.pt", "metrics/train.json", "metrics/eval.json", "data/manifest.csv"]
    before = {name: (project / name).read_bytes() for name in outputs}
    (project / "truncated.pth").write_bytes(b"PK\x03\x04 not the whole file")
    broken = {
        "train.epochs": original.replace("  epochs: 2\n", "  epochs: 0\n"),
        "train.epochs: missing; add `epochs: 4`": original.replace("  epochs: 2\n", ""),
        "mystery: unknown key": original + "mystery: 1\n",
        # issue 24: what the train stage found only after DVC had deleted its outputs
        "train.weights: file": re.sub(r"(?m)^  weights: .*$", "  weights: gone.pth", original),
    }
    for named, text in broken.items():
        assert text != original, named
        (project / "params.yaml").write_text(text)
        done = subprocess.run(
            ["dvc", "repro"], cwd=project, env=tool_env(), capture_output=True, text=True
        )
        assert done.returncode != 0, named
        assert stages_run(done.stdout) == ["params"], named
        assert named in done.stderr and "Traceback" not in done.stderr
        assert {name: (project / name).read_bytes() for name in outputs} == before, named
    # The params stage's other checks (issue 24), by the stage alone: the cases above show
    # that DVC runs it first and keeps every output when it fails.
    checked = {
        "train.epochs: Input should be a valid integer": original.replace(
            "  epochs: 2\n", "  epochs: true\n"
        ),
        "truncated.pth: not a readable weights file": re.sub(
            r"(?m)^  weights: .*$", "  weights: truncated.pth", original
        ),
        "data.archive.sha256: required for a URL source": re.sub(
            r"(?m)^  source: .*$", "  source: https://example.org/cxr.zip", original
        ),
    }
    for named, text in checked.items():
        (project / "params.yaml").write_text(text)
        done = subprocess.run(
            [sys.executable, "stages/params.py"],
            cwd=project,
            env=tool_env(),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 1 and named in done.stderr, (named, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    (project / "params.yaml").write_text(original)
    # Valid again: `params` rewrites its (constant) output and nothing after it re-runs.
    again = run(["dvc", "repro"], project)
    assert stages_run(again.stdout) == ["params"]
    assert run(["dvc", "status", "--json"], project).stdout.strip() == "{}"


def test_run_is_tracked_in_the_project_store(baseline: dict, project: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("cxr-classification")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    baseline = runs[0]
    # every stage but `params`, which only validates and logs nothing
    assert all(baseline.data.tags.get(f"cxr.stage.{stage}") for stage in STAGES[1:])
    assert (
        float(baseline.data.params["lr"])
        == yaml.safe_load((project / "params.yaml").read_text())["lr"]
    )
    metrics = baseline.data.metrics
    assert {"test/accuracy", "test/balanced_accuracy", "test/macro/f1"} <= set(metrics)
    # Series only as series: every per-epoch value is a history, never also a single value.
    history = client.get_metric_history(baseline.info.run_id, "val/loss")
    assert [point.step for point in history] == [1, 2]
    assert not {"val_loss", "train_loss", "train/val_loss", "eval/accuracy"} & set(metrics)
    assert not [name for name in metrics if name.split("/")[-1] in ("support", "test_images")]
    datasets = {d.dataset.name: d.dataset for d in baseline.inputs.dataset_inputs}
    assert set(datasets) == {"train", "val", "test"}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    split_md5 = next(o["md5"] for o in lock["split"]["outs"] if o["path"] == "data/split")
    assert datasets["test"].digest == split_md5
    assert baseline.data.tags["mlflow.source.name"] == "dvc.yaml: " + ", ".join(STAGES[1:])
    folders = {a.path for a in client.list_artifacts(baseline.info.run_id)}
    assert {"data", "training", "evaluation", "gradcam"} <= folders

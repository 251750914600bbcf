"""End to end: the real DVC pipeline in a temporary git+DVC copy of the project.

One module-scoped run on a shrunken synthetic profile is shared; each test starts from that
committed state (`git checkout` + `dvc checkout`), so the tests don't depend on their order.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers.project import copy_project, git_commit, run, set_params, tool_env, tree_hashes

pytestmark = pytest.mark.e2e

STAGES = [
    "params",
    "download",
    "split",
    "augment",
    "train",
    "evaluate",
    "gradcam",
    "embed",
    "defer",
]
AFTER_TRAIN = ["train", "evaluate", "gradcam", "embed", "defer"]

# Small enough for CI on two cores, large enough that every class reaches every split.
SMOKE = {
    "data.synthetic.n_images": 160,
    # 0.15 of the 10 Viral Pneumonia phantoms rounds to no val image: the split stage refuses
    "split.ratio": [0.6, 0.2, 0.2],
    "data.synthetic.image_size": 64,
    "train.image_size": 48,
    "train.epochs": 2,
    "evaluate.bootstrap_resamples": 200,
    "gradcam.images_per_class": 2,
    # LIME scores one perturbed copy per sample: a few images keep the smoke run short
    "gradcam.faithfulness.images": 6,
    "gradcam.lime.num_samples": 60,
}


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def metrics_bytes(project: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((project / "metrics").glob("*.json"))}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shrunken pipeline, reproduced once and committed as the baseline."""
    project = copy_project(tmp_path_factory.mktemp("e2e") / "project")
    set_params(project, SMOKE)
    first = run(["dvc", "repro"], project)
    git_commit(project, "baseline run")
    return {
        "project": project,
        "output": first.stdout,
        "errors": first.stderr,
        "metrics": metrics_bytes(project),
        "augmented": tree_hashes(project / "data" / "augmented"),
    }


@pytest.fixture
def project(pipeline: dict) -> Path:
    """The baseline state, restored: committed params and lock, their outputs checked out."""
    root = pipeline["project"]
    run(["git", "checkout", "--", "."], root)
    run(["dvc", "checkout", "--force"], root)
    return root


def test_repro_runs_all_stages_and_writes_their_outputs(pipeline: dict, project: Path) -> None:
    assert stages_run(pipeline["output"]) == STAGES
    for out in ["data/raw", "data/split/test", "data/augmented/train", "models/model.pt"]:
        assert (project / out).exists(), out
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


def test_smoke_run_prints_epoch_lines_and_nothing_unexpected(pipeline: dict) -> None:
    epochs = re.findall(
        r"^epoch (\d)/2: train loss [\d.]+ acc [\d.]+ \| val loss .* \| [\d.]+ s$",
        pipeline["output"],
        re.MULTILINE,
    )
    assert epochs == ["1", "2"], pipeline["output"]
    unexpected = [
        line
        for line in pipeline["errors"].splitlines()
        if line.strip() and not any(re.fullmatch(pattern, line) for pattern in ALLOWED_STDERR)
    ]
    assert not unexpected, "\n".join(unexpected)


def test_exp_show_lists_only_model_metrics(project: Path) -> None:
    table = run(["dvc", "exp", "show", "--csv"], project).stdout.splitlines()[0].split(",")
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    files = set(next(iter(metrics.values()))["data"])
    assert files == {
        "metrics/train.json",
        "metrics/eval.json",
        "metrics/gradcam.json",
        "metrics/deferral.json",
    }
    assert not any(
        column.startswith(("splits.", "classes.", "before.", "after.", "masks."))
        for column in table
    ), table
    metric_columns = [column for column in table if column in _leaves(project, files)]
    assert 0 < len(metric_columns) <= 45, metric_columns
    # was 232; 202 with issue 14's params (preprocess, embeddings, deferral, LIME and
    # faithfulness) and stages (embed, defer): params and dependencies (52 of them code files,
    # as dvc.yaml lists each stage's import closure) make up the rest
    assert len(table) < 215, len(table)


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


def test_forced_repro_is_byte_identical(pipeline: dict, project: Path) -> None:
    run(["dvc", "repro", "--force"], project)
    assert metrics_bytes(project) == pipeline["metrics"]
    assert tree_hashes(project / "data" / "augmented") == pipeline["augmented"]


def test_lr_experiment_reruns_training_only_and_changes_metrics(project: Path) -> None:
    done = run(["dvc", "exp", "run", "-S", "lr=0.003"], project)
    # `params` validates the new value first; its output is constant, so it re-runs nothing
    assert stages_run(done.stdout) == ["params", *AFTER_TRAIN]
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    changed = {f"{file}:{key}" for file, keys in diff.items() for key in keys}
    assert any(name.startswith("metrics/train.json:") for name in changed), changed


def test_gradcam_key_reruns_gradcam_only(project: Path) -> None:
    done = run(["dvc", "exp", "run", "-S", "gradcam.images_per_class=1"], project)
    assert stages_run(done.stdout) == ["params", "gradcam"]


def test_params_errors_stop_repro_before_any_output_is_lost(project: Path) -> None:
    # issue 16, cases 5 and 10: DVC deletes a stage's outputs before running it, so a bad
    # value found by the train stage cost the model; a deleted key fell back to a code default
    # and an unknown one was never read. The `params` stage catches all three first.
    original = (project / "params.yaml").read_text()
    outputs = ["models/model.pt", "metrics/train.json", "metrics/eval.json", "data/manifest.csv"]
    before = {name: (project / name).read_bytes() for name in outputs}
    broken = {
        "train.epochs": original.replace("  epochs: 2\n", "  epochs: 0\n"),
        "train.epochs: missing; add `epochs: 4`": original.replace("  epochs: 2\n", ""),
        "mystery: unknown key": original + "mystery: 1\n",
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
    (project / "params.yaml").write_text(original)
    # Valid again: `params` rewrites its (constant) output and nothing after it re-runs.
    again = run(["dvc", "repro"], project)
    assert stages_run(again.stdout) == ["params"]
    assert run(["dvc", "status", "--json"], project).stdout.strip() == "{}"


def test_run_is_tracked_in_the_project_store(pipeline: dict, project: Path) -> None:
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


# On real X-rays: the offline-pretrained default recipe against the same recipe from scratch,
# small images and two epochs (fixed seeds), each evaluated by the pipeline on the held-out,
# patient-grouped test split of cxr3.
REAL = {
    **SMOKE,
    "augment.target": "none",
    "train.image_size": 96,
    "train.epochs": 2,
    "lr": 0.001,
    "deferral.target_risk": 0.1,
}


def check_deferral_from_predictions(project: Path) -> dict:
    """Recompute the defer stage's test numbers from plots/predictions.csv, the val-fitted
    temperature and the threshold in models/deferral.json; return the report."""
    import pandas as pd

    from cxr.evaluation.calibration import scale_probabilities
    from cxr.evaluation.metrics import read_predictions

    report = json.loads((project / "reports/deferral.json").read_text())
    rule = json.loads((project / "models/deferral.json").read_text())
    y, probabilities, _ = read_predictions(pd.read_csv(project / "plots/predictions.csv"))
    confidence = scale_probabilities(probabilities, rule["temperature"]).max(1)
    assert rule["threshold"] is not None, report
    kept = confidence >= rule["threshold"]
    wrong = probabilities.argmax(1) != y
    assert report["test"]["accepted"] == kept.sum() > 0
    assert report["test"]["selective_risk"] == pytest.approx(wrong[kept].mean(), abs=1e-6)
    assert report["test"]["overall_risk"] == pytest.approx(wrong.mean(), abs=1e-6)
    return report


def test_pipeline_on_real_xrays_pretrained_beats_scratch_and_majority(
    real_data: Path, tmp_path: Path
) -> None:
    project = copy_project(tmp_path / "project")
    set_params(project, {**REAL, "data.source": str(real_data)})
    run(["dvc", "repro"], project)
    download = json.loads((project / "reports/download.json").read_text())
    classes = sorted(p.name for p in real_data.iterdir() if (p / "images").is_dir())
    assert sorted(download["classes"]) == classes
    assert sum(download["masks"].values()) > 0  # the lung masks came along, as masks
    assert json.loads((project / "reports/data.json").read_text())["groups"]["by"] == "patient"
    pretrained = json.loads((project / "reports/eval.json").read_text())
    cams = {"pretrained": json.loads((project / "reports/gradcam.json").read_text())["overall"]}
    assert sorted(pretrained["per_class"]) == classes
    # Deferral: the images the model keeps are answered better than all of them.
    deferral = check_deferral_from_predictions(project)
    assert deferral["test"]["selective_risk"] < deferral["test"]["overall_risk"]
    git_commit(project, "pretrained run")
    done = run(["dvc", "exp", "run", "-n", "scratch", "-S", "train.weights=none"], project)
    assert stages_run(done.stdout) == ["params", *AFTER_TRAIN]
    # The two experiments compared from their saved predictions on the same test split.
    out = project / "comparison"
    run(["cxr-compare", "HEAD", "scratch", "--resamples", "200", "--out", str(out)], project)
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["params"]["scratch"] == {"train.weights": "none"}
    assert comparison["test_images"] == sum(pretrained["per_class"][c]["support"] for c in classes)
    (pair,) = comparison["pairs"]
    assert 0 <= pair["p_value"] <= pair["p_holm"] <= 1
    scratch = json.loads((project / "reports/eval.json").read_text())
    cams["scratch"] = json.loads((project / "reports/gradcam.json").read_text())["overall"]
    for name, cam in cams.items():  # README, Grad-CAM on cxr3: read from CI's output
        print(
            f"cxr3 Grad-CAM {name}: lung energy/area {cam['energy_over_area']:.2f}, "
            f"pointing hit rate {cam['pointing_hit_rate']:.2f} over {cam['images']} images"
        )
    majority = pretrained["baselines"]["majority"]["balanced_accuracy"]
    print(
        "cxr3 balanced accuracy: pretrained",
        pretrained["balanced_accuracy"],
        "scratch",
        scratch["balanced_accuracy"],
        "majority",
        majority,
    )
    assert pretrained["balanced_accuracy"] > scratch["balanced_accuracy"]
    assert pretrained["balanced_accuracy"] > majority

"""benchmarks/recipe_pipeline.py reads a report only if its stage was in the run, told from
real DVC output: a stage outside the run leaves an older file that must not pass as this run's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.benchmarks import load_benchmark
from tests.helpers.project import git_commit, run, tool_env

pytestmark = pytest.mark.e2e


def _stage(source: str, *outs: str) -> dict:
    copies = " && ".join(f"cp {source} {out}" for out in outs)
    return {"cmd": f"mkdir -p metrics reports && {copies}", "deps": [source], "outs": list(outs)}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git+DVC repo with stand-ins for the reporting stages (each copies a JSON file) and a
    stale report of every stage, as a copy of the project holds its committed smoke outputs."""
    run(["git", "init", "-q", "-b", "main"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    for name in ("train", "evaluate", "audit"):
        (tmp_path / f"{name}.in").write_text(json.dumps({"stage": name, "version": 1}))
    stages = {
        "train": _stage("train.in", "metrics/train.json"),
        "evaluate": _stage("evaluate.in", "reports/eval.json", "reports/external.json"),
        "audit": _stage("audit.in", "reports/audit.json"),
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    git_commit(tmp_path, "stages")
    for name in (
        "reports/eval.json",
        "reports/audit.json",
        "reports/external.json",
        "metrics/gradcam.json",
        "reports/deferral.json",
    ):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(json.dumps({"stale": True}))
    return tmp_path


def test_summary_reads_only_stages_that_ran_were_kept_or_restored(repo: Path) -> None:
    pipeline = load_benchmark("recipe_pipeline")

    only_train = run(["dvc", "repro", "train"], repo).stdout
    result = pipeline.summary(repo, only_train)
    assert result["train"] == {"stage": "train", "version": 1}, only_train
    # evaluate and audit were not in the run: their stale files are not read
    assert result["eval"] == result["audit"] == result["external"] == {}, result
    assert result["gradcam"] == result["deferral"] == {}, result

    run(["dvc", "repro"], repo)
    (repo / "evaluate.in").write_text(json.dumps({"stage": "evaluate", "version": 2}))
    changed = run(["dvc", "repro"], repo).stdout
    assert pipeline.STAGE_LINE.findall(changed) == ["evaluate"], changed
    result = pipeline.summary(repo, changed)
    assert result["eval"]["version"] == 2, result
    # unchanged stages are still this run's: DVC kept their outputs
    assert result["train"]["stage"] == "train" and result["audit"]["stage"] == "audit", changed

    (repo / "evaluate.in").write_text(json.dumps({"stage": "evaluate", "version": 1}))
    restored = run(["dvc", "repro"], repo).stdout
    assert pipeline.STAGE_LINE.findall(restored) == [], restored  # nothing ran: run cache
    result = pipeline.summary(repo, restored)
    assert result["eval"] == result["external"] == {"stage": "evaluate", "version": 1}, restored
    assert result["gradcam"] == result["deferral"] == {}, result


def test_every_report_is_written_by_a_stage_of_the_projects_pipeline() -> None:
    pipeline = load_benchmark("recipe_pipeline")
    writer = pipeline.writers(pipeline.PROJECT)
    stages = {key: writer.get(path) for key, path in pipeline.REPORTS.items()}
    assert stages == {
        "eval": "evaluate",
        "audit": "audit",
        "external": "evaluate",
        "train": "train",
        "gradcam": "gradcam",
        "deferral": "defer",
    }, stages


def test_run_timed_gives_each_stage_that_ran_its_share_of_the_wall_clock(repo: Path) -> None:
    pipeline = load_benchmark("recipe_pipeline")

    timed = pipeline.run_timed(repo, ["dvc", "repro"])
    assert timed.returncode == 0, timed.stdout
    assert list(timed.stages) == pipeline.STAGE_LINE.findall(timed.stdout), timed.stdout
    assert sorted(timed.stages) == ["audit", "evaluate", "train"], timed.stages
    assert all(minutes > 0 for minutes in timed.stages.values()), timed.stages
    # the stages tile the run from the first stage's line on: never more than the whole
    assert sum(timed.stages.values()) <= timed.minutes, (timed.stages, timed.minutes)

    again = pipeline.run_timed(repo, ["dvc", "repro"])
    assert again.returncode == 0 and again.stages == {}, again.stdout  # nothing to run

    failed = pipeline.run_timed(repo, ["dvc", "repro", "no-such-stage"])
    assert failed.returncode != 0 and failed.stages == {}, failed.stdout


def test_stages_that_leave_out_a_directory_output_are_refused_as_dvc_would_fail(
    tmp_path: Path,
) -> None:
    """In a fresh clone (no outputs, no cache) `dvc exp run <stage>` cannot save the
    experiment when a stage it leaves out has a folder holding plots that dvc.yaml shows: the
    benchmark names that stage before the run instead of failing after it."""
    origin = tmp_path / "origin"
    origin.mkdir()
    run(["git", "init", "-q", "-b", "main"], origin)
    run(["dvc", "init", "-q"], origin)
    stages = {
        "base": {"cmd": "echo 1 > base.txt", "outs": ["base.txt"]},
        "score": {"cmd": "cp base.txt score.txt", "deps": ["base.txt"], "outs": ["score.txt"]},
        "maps": {
            "cmd": "mkdir -p maps/grids && cp base.txt maps/grids/a.txt",
            "deps": ["base.txt"],
            "outs": ["maps"],
        },
        "table": {
            "cmd": "mkdir -p table && cp base.txt table/",
            "deps": ["base.txt"],
            "outs": ["table"],
        },
    }
    # as the project's dvc.yaml shows plots/gradcam/grids, inside the gradcam stage's folder
    spec = {"stages": stages, "plots": ["maps/grids"]}
    (origin / "dvc.yaml").write_text(yaml.safe_dump(spec))
    run(["dvc", "repro", "-q"], origin)
    git_commit(origin, "pipeline")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)

    pipeline = load_benchmark("recipe_pipeline")
    # a left-out folder that no plot reads (table) does not stop DVC
    assert pipeline.directories_left_out(clone, ["score"]) == {"maps": ["maps"]}
    assert pipeline.directories_left_out(clone, ["score", "maps"]) == {}
    assert pipeline.directories_left_out(clone, []) == {}  # every stage runs
    failed = subprocess.run(
        ["dvc", "exp", "run", "score"], cwd=clone, env=tool_env(), capture_output=True, text=True
    )
    assert failed.returncode != 0
    assert "failed to load directory" in failed.stdout + failed.stderr
    run(["dvc", "exp", "run", "score", "maps"], clone)  # with the stage in, it saves
    assert pipeline.directories_left_out(pipeline.PROJECT, ["evaluate"]) == {
        "gradcam": ["plots/gradcam"]
    }
    assert pipeline.directories_left_out(pipeline.PROJECT, ["evaluate", "audit"]) == {}


def test_copies_take_the_committed_params_and_results_and_the_workspaces_code(
    tmp_path: Path,
) -> None:
    """After `dvc exp run` the workspace holds the experiment's params.yaml, dvc.lock and
    metrics: a copy (every test's project, every benchmark run) starts from the committed
    ones, while code not yet committed is what it copies (what the tests are there to check)."""
    bench = load_benchmark("recipe_pipeline")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(bench.PROJECT), str(clone)], check=True)
    assert bench.pipeline_state_changed(clone) == []
    committed = {name: (clone / name).read_bytes() for name in ("params.yaml", "dvc.lock")}
    # what `dvc exp run -S train.epochs=20` leaves, and a code change not yet committed
    (clone / "params.yaml").write_text(
        (clone / "params.yaml").read_text().replace("epochs: 4", "epochs: 20", 1)
    )
    (clone / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (clone / "metrics/eval.json").unlink()
    (clone / "src/cxr/__init__.py").write_text("# changed, not committed\n")
    assert bench.pipeline_state_changed(clone) == ["dvc.lock", "metrics/eval.json", "params.yaml"]
    copy = bench.copy_project(tmp_path / "copy", clone)
    for name, data in committed.items():
        assert (copy / name).read_bytes() == data, name
    assert (copy / "metrics/eval.json").is_file()
    assert (copy / "src/cxr/__init__.py").read_text() == "# changed, not committed\n"
    assert run(["git", "status", "--porcelain"], copy).stdout == ""

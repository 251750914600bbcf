"""Shared fixtures: the real X-ray sample, temporary git+DVC copies of the project, and the rule
that nothing is skipped silently in CI."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.project import (
    EVAL_CLASSES,
    TINY_PARAMS,
    copy_project,
    git_commit,
    lock_outs,
    make_split_folders,
    metrics_bytes,
    mix_data_dir,
    real_data_dir,
    run,
    set_params,
    tree_hashes,
)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real chest X-rays in the Kaggle layout (read only; never copied into the project)."""
    path = real_data_dir()
    if not (path / "COVID" / "images").is_dir():
        message = f"real X-ray sample not found at {path}; set CXR_REAL_DATA"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def mix_data() -> Path:
    """cxrmix: cxr3 plus NIH ChestX-ray14 and Hannover images, with a manifest naming each
    image's source (read only; never copied into the project)."""
    path = mix_data_dir()
    if not (path / "manifest.csv").is_file():
        message = f"cxrmix not found at {path}; set CXR_MIX_DATA"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def real_images(real_data: Path) -> list[Path]:
    """A few real X-rays from every class, in a stable order."""
    return [
        path
        for class_dir in sorted(p for p in real_data.iterdir() if (p / "images").is_dir())
        for path in sorted((class_dir / "images").glob("*.png"))[:3]
    ]


@pytest.fixture
def project_copy(tmp_path: Path) -> Iterator[Path]:
    """A throwaway git+DVC copy of the project to run real `dvc` commands in."""
    yield copy_project(tmp_path / "project")


# Fixtures that run pipeline stages for real: a test using one is part of the slow (e2e) run,
# and runs on the one xdist worker that holds the fixture (group = fixture name), so each is
# built once per session, not once per worker.
STAGE_FIXTURES = {"baseline", "evaluated_project"}
# How many `cuda` tests collection left out (in this process; xdist's controller collects none).
GPU_ONLY = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker (`-n 2`, pyproject's default) torch uses one thread, and OpenMP
    threads wait passively. Two workers with two spinning OpenMP threads each oversubscribe 2
    cores: the fast part ran 1.6 times slower than in one process, a stage's training up to 5
    times. With these settings the fast part ran 1.8 times faster, and two e2e tests side by
    side took 110 s against 175 s one after the other. A stage's `train.threads` still sets
    its own threads (reproducible mode re-executes it with them), so no result changes."""
    if hasattr(config, "workerinput"):
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before -m selects by the e2e marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that run stages for real (through a STAGE_FIXTURES fixture) are marked e2e, so
    `pytest -m "not e2e"` is the fast part. Tests marked `cuda` need a GPU: without one they
    are deselected (named in the summary), not skipped, so CI machines without a GPU stay
    green and say why they ran fewer tests."""
    for item in items:
        shared = sorted(STAGE_FIXTURES & set(getattr(item, "fixturenames", ())))
        if shared:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.xdist_group(shared[0]))
    import torch

    if torch.cuda.is_available():
        return
    gpu_only = [item for item in items if item.get_closest_marker("cuda")]
    config.stash[GPU_ONLY] = len(gpu_only)
    if gpu_only:
        items[:] = [item for item in items if item not in gpu_only]
        config.hook.pytest_deselected(items=gpu_only)


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say when the workspace holds an experiment's params and results (`dvc exp run` leaves
    them there): the tests read and copy the committed ones, not those."""
    from tests.helpers.benchmarks import load_benchmark

    changed = load_benchmark("recipe_pipeline").pipeline_state_changed()
    if not changed:
        return None
    changed.sort(key=lambda name: (name != "params.yaml", name != "dvc.lock", name))
    listed = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    return (
        f"cxr: the workspace's {listed} differ from the committed ones (an experiment's); "
        "the tests use the committed versions"
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Say which tests a machine without a GPU left out. Under xdist the workers deselect them
    and the summary would not show it, so the controller says it here."""
    import torch

    if hasattr(config, "workerinput") or torch.cuda.is_available():
        return
    count = config.stash.get(GPU_ONLY, None)  # None: xdist's controller, which collects none
    if count == 0:
        return
    what = (
        "CUDA tests (marked cuda), if any were selected,"
        if count is None
        else f"{count} CUDA test(s)"
    )
    terminalreporter.write_line(f"{what} deselected: torch sees no GPU here")


@pytest.fixture(scope="session")
def evaluated_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with tiny val/test splits, an untrained checkpoint, and the evaluate,
    gradcam, embed, defer and audit stages run in it (real MLflow SQLite store in the copy). Shared
    by the evaluation, explanation, DVC plots and MLflow page tests; none may change it."""
    import torch

    from cxr.training.checkpoint import ModelCard, save_checkpoint
    from cxr.training.models import build_model

    project_copy = copy_project(tmp_path_factory.mktemp("evaluated"))
    make_split_folders(project_copy, size=64, per_class=6)
    torch.manual_seed(0)
    model = build_model("resnet18", len(EVAL_CLASSES))
    card = ModelCard("resnet18", EVAL_CLASSES, image_size=32, weights="none", epoch=1)
    save_checkpoint(project_copy / "models/model.pt", model, card)
    params = project_copy / "params.yaml"
    params.write_text(
        params.read_text().replace("bootstrap_resamples: 1000", "bootstrap_resamples: 50")
    )
    # LIME scores one perturbed copy per sample and image: a few images, few samples
    set_params(
        project_copy,
        {"gradcam.faithfulness.images": 6, "gradcam.lime.num_samples": 60, "audit.probe_folds": 3},
    )
    for stage in ("evaluate", "gradcam", "embed", "defer", "audit"):
        done = run([sys.executable, f"stages/{stage}.py"], project_copy)
        (project_copy / f"{stage}.log").write_text(done.stdout)
    # Record the outputs as DVC would after `dvc repro` (dvc plots reads a directory output
    # through the cache).
    run(
        ["dvc", "commit", "--force", "evaluate", "gradcam", "embed", "defer", "audit"], project_copy
    )
    return project_copy


# The one pipeline run the end-to-end tests share: `dvc repro` with TINY_PARAMS in a temporary
# git+DVC copy of the project, its results committed as the baseline. Tests that change the
# workspace restore it first (`restore`) or only add experiments on top, so the full run is
# paid once per session.
@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny pipeline, reproduced once and committed: its project folder, what `dvc repro`
    printed, and the bytes of its metrics and augmented images."""
    project = copy_project(tmp_path_factory.mktemp("e2e") / "project")
    set_params(project, TINY_PARAMS)
    git_commit(project, "tiny params")
    first = run(["dvc", "repro"], project)
    git_commit(project, "pipeline results")
    return {
        "project": project,
        "output": first.stdout,
        "errors": first.stderr,
        "metrics": metrics_bytes(project),
        "augmented": tree_hashes(project / "data" / "augmented"),
        "outs": lock_outs(project),
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In CI a skip is a failure: every test must run there."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI (not allowed): {reason}"

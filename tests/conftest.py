"""Shared fixtures: the real X-ray sample, temporary git+DVC copies of the project, and the rule
that nothing is skipped silently in CI."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
EVAL_CLASSES = ("COVID", "Normal", "Viral Pneumonia")
REAL_DATA_DEFAULT = PROJECT.parent / "shared" / "data" / "cxr3"


def real_data_dir() -> Path:
    return Path(os.environ.get("CXR_REAL_DATA", REAL_DATA_DEFAULT))


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
def real_images(real_data: Path) -> list[Path]:
    """A few real X-rays from every class, in a stable order."""
    return [
        path
        for class_dir in sorted(p for p in real_data.iterdir() if (p / "images").is_dir())
        for path in sorted((class_dir / "images").glob("*.png"))[:3]
    ]


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first, so DVC's `python` is ours."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it fails."""
    done = subprocess.run(cmd, cwd=cwd, env=tool_env(**extra_env), capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {done.returncode}\n--- stdout\n{done.stdout}"
            f"\n--- stderr\n{done.stderr}"
        )
    return done


def copy_project(dest: Path) -> Path:
    """Copy the project's tracked and untracked-but-not-ignored files into a fresh git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = PROJECT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    run(["git", "init", "-q", "-b", "main"], dest)
    git_commit(dest, "base")
    return dest


# A pipeline run small enough for CI on two cores, with every class in every split. Its lr
# differs from 0.001 so that the README's `dvc exp run -S lr=0.001` is a real change.
TINY_PARAMS: dict[str, object] = {
    "lr": 0.003,
    "data.synthetic.n_images": 120,
    "split.ratio": [0.6, 0.2, 0.2],
    "data.synthetic.image_size": 64,
    "train.image_size": 32,
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.num_workers": 0,
    "evaluate.bootstrap_resamples": 100,
    "gradcam.images_per_class": 1,
}


def set_params(project: Path, values: dict[str, object]) -> None:
    """Overwrite params.yaml keys given as dotted paths (`train.epochs`), like `dvc exp run -S`."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def git_commit(project: Path, message: str) -> str:
    """Commit everything in `project`; returns the new commit's hash."""
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], project)
    return run(["git", "rev-parse", "HEAD"], project).stdout.strip()


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder`, by relative path."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def project_copy(tmp_path: Path) -> Iterator[Path]:
    """A throwaway git+DVC copy of the project to run real `dvc` commands in."""
    yield copy_project(tmp_path / "project")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` need a GPU: without one they are deselected (named in the summary),
    not skipped, so CI machines without a GPU stay green and say why they ran fewer tests."""
    import torch

    if torch.cuda.is_available():
        return
    gpu_only = [item for item in items if item.get_closest_marker("cuda")]
    if gpu_only:
        items[:] = [item for item in items if item not in gpu_only]
        config.hook.pytest_deselected(items=gpu_only)
        print(f"\n{len(gpu_only)} CUDA test(s) deselected: torch sees no GPU here")


def make_split_folders(root: Path, size: int, per_class: int) -> None:
    """Synthetic phantoms + lesion masks in the layout the stages read."""
    from cxr.data.images import save_png
    from cxr.data.synthetic import draw_phantom

    for split_index, split in enumerate(("val", "test", "train")):
        for class_index, name in enumerate(EVAL_CLASSES):
            # train: the first class the largest, so the majority baseline has one answer
            count = per_class + (2 if split == "train" and class_index == 0 else 0)
            for n in range(count):
                seed = 1000 * split_index + 100 * class_index + n
                image, mask = draw_phantom(name, size, seed)
                for folder, picture in (
                    (root / "data/split" / split, image),
                    (root / "data/masks", mask),
                ):
                    (folder / name).mkdir(parents=True, exist_ok=True)
                    save_png(picture, folder / name / f"{split}-{n}.png")


@pytest.fixture(scope="session")
def evaluated_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with tiny val/test splits, an untrained checkpoint, and the evaluate
    and gradcam stages run in it (real MLflow SQLite store in the copy). Shared by the
    evaluation, DVC plots and MLflow page tests; none of them may change it."""
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
    done = run([sys.executable, "stages/evaluate.py"], project_copy)
    (project_copy / "evaluate.log").write_text(done.stdout)
    run([sys.executable, "stages/gradcam.py"], project_copy)
    # Record the outputs as DVC would after `dvc repro` (dvc plots reads a directory output
    # through the cache).
    run(["dvc", "commit", "--force", "evaluate", "gradcam"], project_copy)
    return project_copy


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In CI a skip is a failure: every test must run there."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI (not allowed): {reason}"

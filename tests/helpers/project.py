"""Helpers for tests that work on real copies of the project: temporary git+DVC clones, params
overrides as `dvc exp run -S` makes them, commits, tree hashes, and tiny split folders."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.benchmarks import load_benchmark

PROJECT = Path(__file__).resolve().parents[2]


EVAL_CLASSES = ("COVID", "Normal", "Viral Pneumonia")


REAL_DATA_DEFAULT = PROJECT.parent / "shared" / "data" / "cxr3"


def real_data_dir() -> Path:
    return Path(os.environ.get("CXR_REAL_DATA", REAL_DATA_DEFAULT))


def mix_data_dir() -> Path:
    """cxrmix (1,258 X-rays, five sources): `CXR_MIX_DATA`, else beside cxr3."""
    return Path(os.environ.get("CXR_MIX_DATA", real_data_dir().parent / "cxrmix"))


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
    """Copy the project's tracked and untracked-but-not-ignored files into a fresh git repo
    (benchmarks/recipe_pipeline.py's copy, so that tests and benchmarks run the same one)."""
    return load_benchmark("recipe_pipeline").copy_project(dest)


# A pipeline run small enough for CI on two cores, with every class in every split (0.15 of
# the 7 Viral Pneumonia phantoms would round to no val image: the split stage refuses). Its lr
# differs from 0.001 so that docs/experiments.md's `dvc exp run -S lr=0.001` is a real change;
# two epochs, so that the per-epoch history is a series.
TINY_PARAMS: dict[str, object] = {
    "lr": 0.003,
    "data.synthetic.n_images": 120,
    "split.ratio": [0.6, 0.2, 0.2],
    "data.synthetic.image_size": 64,
    "train.image_size": 32,
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.num_workers": 0,
    "evaluate.bootstrap_resamples": 100,
    "gradcam.images_per_class": 1,
    "gradcam.faithfulness.images": 6,  # LIME: one forward pass per sample and image
    "gradcam.lime.num_samples": 60,
}


# The gradcam stage with Grad-CAM alone, for the real-data tests, which read only its
# localisation: no image scored, so no LIME and no faithfulness curves (LIME's method figures
# are drawn from the scored images: tests/explanation/test_methods.py). LIME itself is checked
# on synthetic data (tests/explanation, the tiny run).
GRADCAM_ONLY: dict[str, object] = {"gradcam.faithfulness.images": 0}


def committed(name: str) -> str:
    """A project file's text as committed. An experiment run in the workspace (`dvc exp run`,
    `dvc exp apply`) rewrites params.yaml, dvc.lock and the pipeline's tracked outputs there;
    the tests check the project's own defaults and committed results, not the last
    experiment's (copy_project does the same for the copies they run)."""
    return load_benchmark("recipe_pipeline").committed(name).decode()


def project_params() -> dict:
    """The project's params.yaml, as committed, as a mapping."""
    return yaml.safe_load(committed("params.yaml"))


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


def make_split_folders(root: Path, size: int, per_class: int) -> None:
    """Synthetic phantoms + lesion masks in the layout the stages read."""
    from cxr.data.images import save_png
    from cxr.data.synthetic import draw_phantom

    rows = []
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
                # metadata as a source's manifest gives it: the first class from its own
                # hospital (a confounded class), the others from two; no view column
                source = "site-a" if class_index == 0 else ("site-b", "site-c")[n % 2]
                age = "" if n == 0 else str(30 + 7 * n)
                rows.append((f"{name}/{split}-{n}.png", source, "FM"[n % 2], age))
    lines = ["file,source_file,source,sex,age", *(f"{f},{f},{s},{x},{a}" for f, s, x, a in rows)]
    (root / "data").mkdir(exist_ok=True)
    (root / "data/metadata.csv").write_text("\n".join(lines) + "\n")


def metrics_bytes(project: Path) -> dict[str, bytes]:
    """The bytes of each DVC metrics file, by name."""
    return {path.name: path.read_bytes() for path in sorted((project / "metrics").glob("*.json"))}


def assert_linked(project: Path, originals_only: bool = False) -> None:
    """Workspace data files share their inode with the DVC cache: links, not second copies.
    `originals_only` leaves out the augmented copies (`__aug` in their names)."""
    for folder in ("raw", "split/train", "augmented/train"):
        files = sorted((project / "data" / folder).rglob("*.png"))
        files = [f for f in files if not (originals_only and "__aug" in f.name)]
        assert files, folder
        for sample in files:
            digest = hashlib.md5(sample.read_bytes()).hexdigest()
            cached = project / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
            assert os.path.samefile(sample, cached), f"{sample}: a copy, not a link"


def lock_outs(project: Path) -> dict[str, str]:
    """The md5 of every stage output as dvc.lock records it, by path."""
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}


# The pipeline's stages in the order `dvc repro` runs them, and those a new model re-runs.
AFTER_TRAIN = ["train", "evaluate", "gradcam", "embed", "defer", "audit"]
STAGES = ["params", "download", "split", "augment", *AFTER_TRAIN]


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran, in order."""
    return re.findall(r"Running stage '([\w-]+)'", output)


def restore(project: Path) -> Path:
    """Back to the committed state: params, lock and code from git, outputs from DVC's cache."""
    run(["git", "checkout", "--", "."], project)
    run(["dvc", "checkout", "--force"], project)
    return project

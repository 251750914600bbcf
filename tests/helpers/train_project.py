"""A minimal project folder for running the train stage for real: params.yaml plus tiny
generated train/val image folders, in the layout the stage reads (cxr.core.layout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from cxr.core.config import TrainConfig
from cxr.training.pixels import PixelSet
from tests.helpers.project import project_params

PROJECT = Path(__file__).resolve().parents[2]
CLASSES = ("COVID", "Normal", "Viral Pneumonia")


def write_images(folder: Path, per_class: int, size: int, seed: int) -> None:
    """Class-separable grayscale PNGs: a class-specific bright band over seeded noise."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (size, size)).astype(np.uint8)
            band = slice(label * size // 3, (label + 1) * size // 3)
            pixels[band, :] += 120
            Image.fromarray(pixels, mode="L").save(folder / name / f"{name[0]}{i:03d}.png")


def small_params(**train: Any) -> dict[str, Any]:
    """The project's params.yaml (as committed) with a tiny, fast train section."""
    params = project_params()
    params["train"].update(
        {"image_size": 32, "epochs": 3, "batch_size": 8, "num_workers": 0, "device": "cpu"}
    )
    params["train"].update(train)
    return params


def make_project(root: Path, per_class: int = 8, **train: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(small_params(**train), sort_keys=False))
    write_images(root / "data/augmented/train", per_class, 40, seed=1)
    write_images(root / "data/split/val", max(2, per_class // 4), 40, seed=2)
    return root


def stage_env(root: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    for name in ("DVC_ROOT", "CXR_CACHE_DIR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    env.update(extra)
    return env


def kernels_capability(env: dict[str, str]) -> str:
    """ATen's CPU capability a process started with `env` runs (AVX512, AVX2, ...)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def train_command() -> list[str]:
    return [sys.executable, str(PROJECT / "stages" / "train.py")]


def run_train(root: Path, cmd: list[str] | None = None, **extra: str) -> str:
    """Run the train stage in `root`; fail with its output if it fails."""
    done = subprocess.run(
        cmd or train_command(),
        cwd=root,
        env=stage_env(root, **extra),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"train failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def tiny_set(n: int = 12, size: int = 32, seed: int = 0) -> PixelSet:
    """n seeded noise images of three classes, in memory: for the training loop's plumbing."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % 3
    return PixelSet(("a", "b", "c"), tuple(Path(f"{i}.png") for i in range(n)), pixels, labels)


def tiny_cfg(**overrides: Any) -> TrainConfig:
    """A train section for resnet18 from scratch at 32 px, on the CPU, one epoch."""
    base = {
        "model": "resnet18",
        "weights": "none",
        "image_size": 32,
        "epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "device": "cpu",
    }
    return TrainConfig(**{**base, **overrides})

"""The augment stage: oversample minority classes of the train split with Augmentor.

Augmentor provides the operations (listed in params as Pipeline method names and arguments).
Its own `Pipeline.sample` is not reproducible: it draws from the shared global RNGs across
threads and names files with uuid4. So we run its operations ourselves, one output at a time,
after seeding Python's and NumPy's RNGs from the output's identity (class, source image,
per-source index). Each output's name derives from the same identity, so results are identical
for any number of worker processes and across runs. Val and test are never augmented.
"""

from __future__ import annotations

import hashlib
import inspect
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import Augmentor
import numpy as np
import pandas as pd
from PIL import Image

from cxr.core.errors import ConfigError
from cxr.core.fsio import atomic_dir, sorted_dirs, sorted_files, write_csv
from cxr.data.images import read_gray8, save_png, to_gray8
from cxr.data.links import link_or_copy
from cxr.core.parallel import ordered_map
from cxr.core.registry import Registry

if TYPE_CHECKING:
    from cxr.core.config import AugmentConfig, AugmentOp


@dataclass(frozen=True)
class Operation:
    """An Augmentor Pipeline method, by name (`augment.operations[].name`)."""

    name: str

    def check(self, probability: float, args: dict[str, Any]) -> None:
        """Raise ValueError unless Augmentor accepts these arguments (its own range checks
        included)."""
        method = getattr(Augmentor.Pipeline, self.name)
        try:
            inspect.signature(method).bind(None, probability, **args)
        except TypeError as err:
            raise ValueError(f"{self.name}: {err}") from None
        method(Augmentor.Pipeline(), probability, **args)

    def add_to(self, pipeline: Augmentor.Pipeline, probability: float, args: dict) -> None:
        getattr(pipeline, self.name)(probability, **args)


# Augmentor operations that keep an 8-bit grayscale image's size and meaning. Crops and
# resizes would change the size; colour, invert and black-and-white make no sense on X-rays.
OPERATIONS: Registry[Operation] = Registry("augment operation", "augment.operations[].name")
for _name in (
    "rotate",
    "rotate_without_crop",
    "flip_left_right",
    "flip_top_bottom",
    "flip_random",
    "random_distortion",
    "gaussian_distortion",
    "zoom",
    "zoom_random",
    "shear",
    "skew",
    "skew_tilt",
    "skew_left_right",
    "skew_top_bottom",
    "skew_corner",
    "random_brightness",
    "random_contrast",
    "random_erasing",
    "histogram_equalisation",
):
    OPERATIONS.register(_name, Operation(_name))

MANIFEST_COLUMNS = ["file", "class", "source", "augmented", "seed"]
MANIFEST_NAME = "manifest.csv"


def build_pipeline(operations: tuple[AugmentOp, ...]) -> Augmentor.Pipeline:
    pipeline = Augmentor.Pipeline()
    for op in operations:
        OPERATIONS[op.name].add_to(pipeline, op.probability, op.args)
    return pipeline


def target_count(counts: dict[str, int], target: str | int | float) -> int:
    """How many train images each class is oversampled up to."""
    largest = max(counts.values())
    if target == "majority":
        return largest
    if target == "none":  # no oversampling: the train split as it is
        return 0
    if isinstance(target, float):
        return max(1, round(largest * target))
    return int(target)


def output_seed(seed: int, class_name: str, source_name: str, index: int) -> int:
    """A 32-bit seed from the output's identity; stable across runs, machines and workers."""
    key = f"{seed}\0{class_name}\0{source_name}\0{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


@dataclass(frozen=True)
class AugmentTask:
    source: Path
    destination: Path
    seed: int


# One pipeline per worker process, built once by the pool initializer.
_worker_transform: Callable[[Image.Image], Image.Image] | None = None


def _init_worker(operations: tuple[AugmentOp, ...]) -> None:
    global _worker_transform
    _worker_transform = build_pipeline(operations).torch_transform()


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Python's and NumPy's global RNGs seeded for one output, and restored after: Augmentor's
    operations draw from both, and the process that runs them keeps its own streams."""
    saved = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def _augment_one(task: AugmentTask) -> None:
    assert _worker_transform is not None, "worker not initialised"
    with seeded_global_rngs(task.seed):
        image = _worker_transform(read_gray8(task.source))
    # Level 1: augmented images are an intermediate product; encoding dominates the stage.
    save_png(to_gray8(image), task.destination, compress_level=1)


def plan_class(
    class_dir: Path, out_dir: Path, target: int, seed: int
) -> tuple[list[dict[str, Any]], list[AugmentTask]]:
    """Manifest rows and augmentation tasks for one class: originals first, then extras."""
    sources = sorted_files(class_dir)
    rows = [
        {
            "file": f"{class_dir.name}/{src.name}",
            "class": class_dir.name,
            "source": f"{class_dir.name}/{src.name}",
            "augmented": False,
            "seed": "",
        }
        for src in sources
    ]
    tasks = []
    for number in range(max(0, target - len(sources))):
        # Round-robin over sources: every source is used equally often (±1).
        src = sources[number % len(sources)]
        index = number // len(sources)
        name = f"{src.stem}__aug{index:04d}.png"
        task_seed = output_seed(seed, class_dir.name, src.name, index)
        tasks.append(AugmentTask(src, out_dir / class_dir.name / name, task_seed))
        rows.append(
            {
                "file": f"{class_dir.name}/{name}",
                "class": class_dir.name,
                "source": f"{class_dir.name}/{src.name}",
                "augmented": True,
                "seed": task_seed,
            }
        )
    return rows, tasks


def augment_train(
    train_dir: Path, out_dir: Path, cfg: AugmentConfig, workers: int | None = None
) -> dict:
    """Write `out_dir/train/<Class>` (originals + oversampled extras) and
    `out_dir/manifest.csv` (each file's source image), atomically; return the metrics."""
    class_dirs = sorted_dirs(train_dir)
    before = {d.name: len(sorted_files(d)) for d in class_dirs}
    target = target_count(before, cfg.target)
    if not cfg.operations and any(target > count for count in before.values()):
        raise ConfigError(
            "augment.operations: empty, so oversampling would only copy images; "
            "list at least one Augmentor operation"
        )
    rows: list[dict[str, Any]] = []
    tasks: list[AugmentTask] = []
    with atomic_dir(out_dir) as scratch:
        train_out = scratch / "train"
        for class_dir in class_dirs:
            (train_out / class_dir.name).mkdir(parents=True)
            for src in sorted_files(class_dir):
                link_or_copy(src, train_out / class_dir.name / src.name)  # no second copy
            class_rows, class_tasks = plan_class(class_dir, train_out, target, cfg.seed)
            rows += class_rows
            tasks += class_tasks
        ordered_map(_augment_one, tasks, workers, _init_worker, (cfg.operations,), desc="augment")
        write_csv(scratch / MANIFEST_NAME, pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
    after = {name: max(count, target) for name, count in before.items()}
    return {"before": before, "after": after, "target": target, "generated": len(tasks)}

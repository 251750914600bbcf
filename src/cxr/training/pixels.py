"""Image folders → a uint8 pixel store: what every model-facing stage reads.

Each image is decoded and resized once (in worker processes) into one `uint8` array of shape
(N, 1, S, S): in RAM for evaluation (`load_split`), or, for training, in the memory-mapped
store of `cxr.training.cache` (`cached_split`), which later runs on the same data and size
reuse. Preprocessing (`preprocess`: the resize, then the model's intensity preprocessing,
cxr.training.preprocessing) is the single definition used by training, evaluation, Grad-CAM,
LIME, embeddings and `predict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxr.core.errors import DataError
from cxr.core.fsio import sorted_dirs, sorted_files
from cxr.core.parallel import ordered_map
from cxr.data.images import read_gray8
from cxr.training import cache
from cxr.training.preprocessing import Preprocessing


@dataclass(frozen=True)
class FolderIndex:
    """Files of a `<Class>/<file>` folder in a stable order, with integer labels."""

    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: tuple[int, ...]


def index_folder(root: Path, classes: tuple[str, ...] | None = None) -> FolderIndex:
    """Index `root`; with `classes` given, its class folders must be exactly those."""
    found = tuple(d.name for d in sorted_dirs(root))
    if classes is not None and set(found) != set(classes):
        raise DataError(
            f"{root}: class folders {list(found)} differ from the model's classes "
            f"{list(classes)}; re-run the split stage (dvc repro)"
        )
    classes = classes or found
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_files = sorted_files(root / name)
        files += class_files
        labels += [label] * len(class_files)
    if not files:
        raise DataError(f"{root}: no images found")
    return FolderIndex(classes, tuple(files), tuple(labels))


def preprocess(image: Image.Image, size: int, prep: Preprocessing | None = None) -> np.ndarray:
    """8-bit grayscale image → (size, size) uint8 array: the one resize used everywhere, then
    the model's intensity preprocessing (`prep`; None: none)."""
    resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return resized if prep is None else prep.apply(resized)


def _decode(task: tuple[Path, int, Preprocessing | None]) -> np.ndarray:
    path, size, prep = task
    return preprocess(read_gray8(path), size, prep)


def load_pixels(
    files: tuple[Path, ...],
    size: int,
    workers: int | None = None,
    desc: str = "",
    prep: Preprocessing | None = None,
) -> torch.Tensor:
    """Decode, resize and preprocess every file once: a (N, 1, size, size) uint8 tensor
    (progress shown under `desc`, if given)."""
    arrays = ordered_map(_decode, [(path, size, prep) for path in files], workers, desc=desc)
    return torch.from_numpy(np.stack(arrays)[:, None])


@dataclass(frozen=True)
class PixelSet:
    """A split held as decoded pixels."""

    classes: tuple[str, ...]
    files: tuple[Path, ...]
    pixels: torch.Tensor  # (N, 1, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    key: str = ""  # the pixel store's content key (cxr.training.cache), when loaded from it

    def __len__(self) -> int:
        return len(self.files)


def load_split(
    root: Path,
    size: int,
    classes: tuple[str, ...] | None = None,
    prep: Preprocessing | None = None,
) -> PixelSet:
    """Decode a split into RAM (evaluation, Grad-CAM: read once, no cache needed)."""
    index = index_folder(root, classes)
    return PixelSet(
        index.classes,
        index.files,
        load_pixels(index.files, size, prep=prep),
        torch.tensor(index.labels, dtype=torch.int64),
    )


def cached_split(
    root: Path,
    size: int,
    classes: tuple[str, ...] | None = None,
    build: bool = True,
    prep: Preprocessing | None = None,
) -> PixelSet:
    """A split from the memory-mapped pixel store (see cxr.training.cache), decoding it on a miss.

    With `build=False` a missing entry is an error: DDP ranks other than 0 wait for rank 0 to
    build the store instead of decoding the same images again.
    """
    index = index_folder(root, classes)
    key = cache.store_key(root, index.files, index.labels, size, prep.key() if prep else "none")
    stored = cache.open_store(key)
    if stored is None:
        if not build:
            raise DataError(f"{root}: pixel store {key} missing in {cache.cache_dir()}")
        pixels = load_pixels(index.files, size, desc=f"decoding {root} at {size} px", prep=prep)
        stored = cache.write_store(key, pixels.numpy())
    return PixelSet(
        index.classes,
        index.files,
        torch.from_numpy(stored),
        torch.tensor(index.labels, dtype=torch.int64),
        key,
    )

"""Decoded-pixel store: each split decoded and resized once into a uint8 memory-mapped array.

The store lives under `<project root>/.cxr_cache/pixels` (git- and DVC-ignored; override with
`CXR_CACHE_DIR`), one `<key>.u8` array of shape (N, 1, S, S) plus `<key>.json` describing it.
The key hashes the image size, the preprocessing (if any) and, for every file in order, its
path relative to the split root, its label and the sha256 of its bytes — so changed data, a new
size or other preprocessing gets a new entry and an unchanged split is never decoded twice.
Entries are written under a scratch name unique to the writer and renamed into place
(`cxr.core.fsio.atomic_file`), so a killed build leaves nothing that looks complete, and two
processes building the same entry at once (parallel queued experiments share the store) both
succeed: each renames its own identical copy into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from cxr.core.fsio import atomic_file, sha256_file
from cxr.core.layout import project_root

FORMAT = 1


def cache_dir() -> Path:
    override = os.environ.get("CXR_CACHE_DIR")
    return Path(override) if override else project_root() / ".cxr_cache" / "pixels"


def store_key(
    root: Path,
    files: tuple[Path, ...],
    labels: tuple[int, ...],
    size: int,
    preprocessing: str = "none",
) -> str:
    """Content hash of a split at one image size and preprocessing (Preprocessing.key)."""
    prefix = f"cxr-pixels-v{FORMAT}:{size}"
    if preprocessing != "none":  # entries without preprocessing keep their keys
        prefix += f":{preprocessing}"
    digest = hashlib.sha256(prefix.encode())
    for path, label in zip(files, labels, strict=True):
        relative = path.relative_to(root).as_posix()
        digest.update(f"\0{relative}\0{label}\0{sha256_file(path)}".encode())
    return digest.hexdigest()[:32]


def open_store(key: str, directory: Path | None = None) -> np.memmap | None:
    """The cached array of `key`, memory-mapped copy-on-write, or None when absent."""
    directory = directory or cache_dir()
    meta_path, data_path = directory / f"{key}.json", directory / f"{key}.u8"
    if not (meta_path.is_file() and data_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    shape = tuple(meta["shape"])
    if meta.get("format") != FORMAT or data_path.stat().st_size != int(np.prod(shape)):
        return None  # stale or truncated: rebuild
    # copy-on-write: torch can wrap it without a read-only warning; the file is never changed
    return np.memmap(data_path, dtype=np.uint8, mode="c", shape=shape)


def write_store(key: str, pixels: np.ndarray, directory: Path | None = None) -> np.memmap:
    """Persist a (N, 1, S, S) uint8 array under `key` and return it memory-mapped."""
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / f"{key}.u8") as scratch:
        np.ascontiguousarray(pixels, dtype=np.uint8).tofile(scratch)
    # the metadata is written last: its presence marks a complete entry
    with atomic_file(directory / f"{key}.json") as scratch:
        scratch.write_text(json.dumps({"format": FORMAT, "shape": list(pixels.shape)}))
    stored = open_store(key, directory)
    assert stored is not None
    return stored

"""Atomic, deterministic file output.

A stage writes each output under a sibling name `.<name>.partial` and renames it into place
only when complete, so an interrupted stage never leaves a half result that DVC would take for
a finished one. Partial names are fixed, not random, and a stale one is cleared on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield an empty scratch folder that replaces `final` only if the block succeeds."""
    final = Path(final)
    scratch = partial_path(final)
    _remove(scratch)
    scratch.mkdir(parents=True)
    try:
        yield scratch
    except BaseException:
        _remove(scratch)
        raise
    _remove(final)
    scratch.rename(final)


@contextmanager
def atomic_file(final: Path | str) -> Iterator[Path]:
    """Yield a scratch path that replaces `final` (atomically, os.replace) if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = partial_path(final)
    _remove(scratch)
    try:
        yield scratch
    except BaseException:
        _remove(scratch)
        raise
    os.replace(scratch, final)


def write_json(path: Path | str, data: Any) -> None:
    """Stable JSON (sorted keys, fixed float repr) so equal results are byte-identical."""
    with atomic_file(path) as scratch:
        scratch.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path | str, frame: pd.DataFrame) -> None:
    with atomic_file(path) as scratch:
        frame.to_csv(scratch, index=False, lineterminator="\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sorted_files(folder: Path, extensions: tuple[str, ...] | None = None) -> list[Path]:
    """Visible files of a folder in a stable (byte-wise name) order."""
    files = [
        path
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and (extensions is None or path.suffix.lower() in extensions)
    ]
    return sorted(files, key=lambda path: path.name)


def sorted_dirs(folder: Path) -> list[Path]:
    return sorted(
        (path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")),
        key=lambda path: path.name,
    )

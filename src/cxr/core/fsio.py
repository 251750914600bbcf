"""Atomic, deterministic file output.

A stage writes each output under a sibling scratch name `.<name>.<host>-<pid>-<random>.partial`
and renames it into place only when complete, so an interrupted stage never leaves a half result
that DVC would take for a finished one. Scratch names are unique per writer, so two processes
writing the same file (parallel queued experiments filling one pixel-cache entry) never remove
or rename each other's scratch; the scratch of a killed writer on this machine is cleared by the
next write of the same file. A full disk surfaces as a `DiskFullError` naming the output.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr.core.errors import DiskFullError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PARTIAL_SUFFIX = ".partial"
# The writer's machine, in scratch names: only a dead process of *this* machine can be told
# from a live one (a shared filesystem may hold another machine's scratch in progress).
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def partial_path(final: Path, pid: int | None = None) -> Path:
    """A fresh scratch name beside `final`, unique to this process and call."""
    tag = f"{_HOST}-{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}"
    return final.with_name(f".{final.name}.{tag}{PARTIAL_SUFFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _clear_stale(final: Path) -> None:
    """Remove scratch of `final` left by killed writers of this machine (and the fixed
    `.<name>.partial` of older versions); a live writer's scratch is left alone."""
    prefix = f".{final.name}."
    if not final.parent.is_dir():
        return
    for path in final.parent.iterdir():
        name = path.name
        if not (name.startswith(prefix) and name.endswith(PARTIAL_SUFFIX)):
            continue
        tag = name[len(prefix) : -len(PARTIAL_SUFFIX)]
        host, _, rest = tag.partition("-")
        pid = rest.partition("-")[0]
        legacy = tag == ""
        if legacy or (host == _HOST and pid.isdigit() and not _alive(int(pid))):
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def disk_errors(path: Path | str) -> Iterator[None]:
    """Turn "no space left on device" (or an exceeded quota) while writing `path` into a
    DiskFullError that names it; any other OSError passes through, with `path` as its file
    when it named none (a write's EFBIG or EIO names no file of its own)."""
    try:
        yield
    except OSError as err:
        if err.errno not in NO_SPACE:
            if err.filename is None and err.errno is not None:
                raise OSError(err.errno, err.strerror, str(path)) from None
            raise
        folder = _existing(Path(path).absolute())
        free = shutil.disk_usage(folder).free / 1e6
        raise DiskFullError(
            f"{path}: no space left on the device ({free:.0f} MB free at {folder}). Free some "
            "space and re-run; temporary files go to $TMPDIR and the train stage's pixel store "
            "to $CXR_CACHE_DIR, which can point at a larger disk."
        ) from None


@contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield an empty scratch folder that replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(final)
    scratch = partial_path(final)
    scratch.mkdir()
    try:
        with disk_errors(final):
            yield scratch
    except BaseException:
        _remove(scratch)
        raise
    if final.exists() or final.is_symlink():
        # moved aside, not deleted first: `final` is missing only between two renames
        old = partial_path(final)
        final.rename(old)
        scratch.rename(final)
        _remove(old)
    else:
        scratch.rename(final)


@contextmanager
def atomic_file(final: Path | str) -> Iterator[Path]:
    """Yield a scratch path that replaces `final` (atomically, os.replace) if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(final)
    scratch = partial_path(final)
    try:
        with disk_errors(final):
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


# Fixed metadata so identical figures give identical PNG bytes.
_PNG_METADATA = {"Software": None}


def save_figure(figure: Figure, path: Path | str, dpi: int = 100) -> None:
    """A matplotlib figure as a PNG, written atomically."""
    with atomic_file(path) as scratch:
        figure.savefig(scratch, format="png", dpi=dpi, metadata=_PNG_METADATA)


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

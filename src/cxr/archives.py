"""Archives from untrusted places: verified HTTP download and safe extraction.

`download` streams a URL to a temporary file (progress bar on stderr), retries transient
failures with exponential backoff, checks the sha256 and only then moves the file into place;
on any failure nothing is left behind. `safe_extract` unpacks a zip or tar(.gz) only after
checking every member: no absolute paths, no `..`, no links pointing outside the target, no
device files, and caps on file count and total size (a zip bomb is refused before it is
written, and the byte count is enforced again while writing, since headers can lie).
"""

from __future__ import annotations

import hashlib
import stat
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import requests
from tqdm import tqdm

from cxr.errors import CxrError
from cxr.fsio import atomic_file

CHUNK = 1 << 20
# HTTP statuses worth another try; anything else >= 400 is final.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
STATUS_HINTS = {
    401: "the server wants credentials; check the URL or download it yourself",
    403: "access denied; check the URL or download it yourself",
    404: "not found; check data.source",
}


class ArchiveError(CxrError, ValueError):
    """An archive that cannot be downloaded, verified or safely extracted."""


@dataclass(frozen=True)
class ExtractLimits:
    max_files: int
    max_bytes: int


# ---------------------------------------------------------------- download


class _Transient(Exception):
    """A failure that another attempt may fix."""


def _stream_to(response: requests.Response, path: Path, url: str) -> str:
    """Write the body to `path` with a progress bar; return its sha256."""
    digest = hashlib.sha256()
    total = int(response.headers.get("Content-Length") or 0) or None
    with (
        path.open("wb") as handle,
        tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, leave=False) as bar,
    ):
        for chunk in response.iter_content(CHUNK):
            handle.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _attempt(url: str, path: Path, timeout: float) -> str:
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code in TRANSIENT_STATUSES:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                hint = STATUS_HINTS.get(response.status_code, "check data.source")
                raise ArchiveError(f"{url}: HTTP {response.status_code}, {hint}.")
            return _stream_to(response, path, url)
    except requests.Timeout:
        raise _Transient(f"no answer within {timeout:g} s") from None
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
        raise _Transient(f"connection failed ({type(err).__name__})") from None


def download(
    url: str,
    dest: Path,
    sha256: str,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Fetch `url` to `dest` if its sha256 matches; raise ArchiveError (and leave no file)."""
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))  # backoff between tries, not in tests
        try:
            with atomic_file(dest) as scratch:
                got = _attempt(url, scratch, timeout)
                if got != sha256.lower():
                    raise ArchiveError(
                        f"{url}: sha256 is {got}, but data.archive.sha256 expects {sha256}. "
                        "The file changed or is corrupt; fix the URL or the expected sha256."
                    )
            return dest
        except _Transient as err:
            last = str(err)
    raise ArchiveError(f"{url}: gave up after {retries + 1} tries: {last}.")


# ---------------------------------------------------------------- safe extraction


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in path.parts:
        raise ArchiveError(f"{archive}: member {name!r} points outside the folder (..)")
    return path


def _check_link(name: PurePosixPath, target: str, archive: Path, hard: bool) -> None:
    """A link target must stay inside the extraction folder."""
    base = PurePosixPath() if hard else name.parent
    resolved: list[str] = []
    for part in (base / target).parts if not target.startswith("/") else ("..",):
        if part == "..":
            if not resolved:
                raise ArchiveError(
                    f"{archive}: link {str(name)!r} -> {target!r} escapes the folder"
                )
            resolved.pop()
        elif part not in {"", "."}:
            resolved.append(part)


def _check_totals(count: int, size: int, archive: Path, limits: ExtractLimits) -> None:
    if count > limits.max_files:
        raise ArchiveError(
            f"{archive}: {count} members exceed data.archive.max_files={limits.max_files}; "
            "raise it if the archive is trusted"
        )
    if size > limits.max_bytes:
        raise ArchiveError(
            f"{archive}: {size} bytes uncompressed exceed data.archive.max_mb "
            f"({limits.max_bytes} bytes); a zip bomb, or raise the limit if trusted"
        )


def _copy_capped(source, target: Path, budget: int, archive: Path) -> int:
    """Copy a member's stream, refusing to write more than `budget` bytes in all."""
    written = 0
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > budget:
                raise ArchiveError(
                    f"{archive}: more data than its headers declare; refusing (zip bomb)"
                )
            out.write(chunk)
    return written


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> Iterator[tuple[zipfile.ZipInfo, str]]:
    for info in zf.infolist():
        name = _safe_name(info.filename, archive)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            _check_link(name, zf.read(info).decode(), archive, hard=False)
            yield info, "link"
        else:
            yield info, "dir" if info.is_dir() else "file"


def _extract_zip(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = list(_zip_members(archive, zf))
        _check_totals(len(members), sum(i.file_size for i, _ in members), archive, limits)
        budget = limits.max_bytes
        for info, kind in members:
            target = dest / info.filename
            if kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
            elif kind == "file":  # links inside the folder are checked but not recreated
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source:
                    budget -= _copy_capped(source, target, min(budget, info.file_size), archive)


def _extract_tar(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            name = _safe_name(member.name, archive)
            if member.issym() or member.islnk():
                _check_link(name, member.linkname, archive, hard=member.islnk())
            elif not (member.isfile() or member.isdir()):
                raise ArchiveError(f"{archive}: member {member.name!r} is a device or fifo")
        _check_totals(len(members), sum(m.size for m in members), archive, limits)
        tf.extractall(dest, filter="data")  # the stdlib's own guard, on top of ours


def safe_extract(archive: Path, dest: Path, limits: ExtractLimits) -> Path:
    """Extract a zip or tar(.gz/.bz2/.xz) into `dest` after checking every member."""
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, limits)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, dest, limits)
    else:
        raise ArchiveError(f"{archive}: not a zip or tar archive")
    return dest

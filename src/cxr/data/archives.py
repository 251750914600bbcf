"""Archives from untrusted places: verified HTTP download and safe extraction.

`download` streams a URL to a temporary file (progress bar on stderr), retries transient
failures with exponential backoff, refuses a body larger than the size cap (from its
Content-Length, and again while receiving), checks the sha256 and only then moves the file into
place; on any failure nothing is left behind. Credentials come from the environment or
~/.netrc (see `cxr.core.urls`), and every URL in a message is redacted. `safe_extract` unpacks a zip
or tar(.gz) only after checking every member: no absolute paths, no `..`, no links pointing
outside the target, no device files, caps on file count, total size and compression ratio (a
zip bomb is refused before it is written, and the byte count is enforced again while writing,
since headers can lie). A corrupt member becomes an ArchiveError naming it.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tarfile
import sys
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from cxr.core.errors import CxrError
from cxr.core.fsio import atomic_file, disk_errors
from cxr.core.urls import plain_http_warning, redact_url, request_auth

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
    max_ratio: float = 100.0  # uncompressed / compressed, per zip member and per archive


# Members (and archives) smaller than this are not held to max_ratio: a few KiB of text can
# compress 100:1 and do no harm; the total size cap bounds them all together.
RATIO_FLOOR = 1 << 20
# What a damaged or hostile archive raises while being read, besides our own checks.
READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError)


# ---------------------------------------------------------------- download


class _Transient(Exception):
    """A failure that another attempt may fix."""


def _too_big(shown: str, what: str, max_bytes: int) -> ArchiveError:
    return ArchiveError(
        f"{shown}: {what}, more than data.archive.max_mb allows ({max_bytes} bytes); refusing. "
        "Raise data.archive.max_mb if the file is trusted."
    )


def _stream_to(response: requests.Response, path: Path, shown: str, max_bytes: int) -> str:
    """Write the body to `path` with a progress bar, at most `max_bytes`; return its sha256."""
    digest = hashlib.sha256()
    total = int(response.headers.get("Content-Length") or 0) or None
    if total is not None and total > max_bytes:
        raise _too_big(shown, f"the server announces {total} bytes", max_bytes)
    received = 0
    name = Path(urlsplit(shown).path).name
    with (
        disk_errors(path),
        path.open("wb") as handle,
        tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar,
    ):
        for chunk in response.iter_content(CHUNK):
            received += len(chunk)
            if received > max_bytes:  # a missing or lying Content-Length
                raise _too_big(shown, f"the body goes on past {received} bytes", max_bytes)
            handle.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _attempt(url: str, path: Path, timeout: float, max_bytes: int) -> str:
    shown = redact_url(url)
    headers, auth = request_auth()  # none: requests reads ~/.netrc for the host itself
    try:
        with requests.get(
            url, stream=True, timeout=timeout, headers=headers, auth=auth
        ) as response:
            if response.status_code in TRANSIENT_STATUSES:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                hint = STATUS_HINTS.get(response.status_code, "check data.source")
                raise ArchiveError(f"{shown}: HTTP {response.status_code}, {hint}.")
            return _stream_to(response, path, shown, max_bytes)
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
    max_bytes: int = 4096 << 20,
) -> Path:
    """Fetch `url` to `dest` if its sha256 matches and it is at most `max_bytes`; raise
    ArchiveError (and leave no file) otherwise."""
    last = ""
    shown = redact_url(url)
    warning = plain_http_warning(url)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))  # backoff between tries, not in tests
        try:
            with atomic_file(dest) as scratch:
                got = _attempt(url, scratch, timeout, max_bytes)
                if got != sha256.lower():
                    raise ArchiveError(
                        f"{shown}: sha256 is {got}, but data.archive.sha256 expects {sha256}. "
                        "The file changed or is corrupt; fix the URL or the expected sha256."
                    )
            return dest
        except _Transient as err:
            last = str(err)
    raise ArchiveError(f"{shown}: gave up after {retries + 1} tries: {last}.")


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


def _check_ratio(what: str, size: int, packed: int, limits: ExtractLimits) -> None:
    """Refuse `size` bytes that came from only `packed` bytes at more than max_ratio:1."""
    if size > RATIO_FLOOR and size > limits.max_ratio * max(packed, 1):
        raise ArchiveError(
            f"{what}: {size} bytes packed into {packed} (over data.archive.max_ratio="
            f"{limits.max_ratio:g}:1); refusing a likely zip bomb. Raise data.archive.max_ratio "
            "if the archive is trusted."
        )


def _copy_capped(source, target: Path, budget: int, archive: Path, member: str) -> int:
    """Copy a member's stream, refusing to write more than `budget` bytes in all."""
    written = 0
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > budget:
                raise ArchiveError(
                    f"{archive}: member {member!r} holds more data than its headers declare; "
                    "refusing (zip bomb)"
                )
            out.write(chunk)
    return written


def _is_zip_dir(info: zipfile.ZipInfo) -> bool:
    return info.is_dir() or info.filename.endswith("\\")  # Windows tools write `dir\`


def _zip_members(
    archive: Path, zf: zipfile.ZipFile
) -> Iterator[tuple[zipfile.ZipInfo, PurePosixPath, str]]:
    for info in zf.infolist():
        name = _safe_name(info.filename, archive)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            _check_link(name, zf.read(info).decode(errors="replace"), archive, hard=False)
            yield info, name, "link"
        else:
            yield info, name, "dir" if _is_zip_dir(info) else "file"


def _extract_zip(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = list(_zip_members(archive, zf))
        _check_totals(len(members), sum(i.file_size for i, _, _ in members), archive, limits)
        for info, _, _ in members:
            where = f"{archive}: member {info.filename!r}"
            _check_ratio(where, info.file_size, info.compress_size, limits)
        budget = limits.max_bytes
        for info, name, kind in members:
            # `name` has `/` separators: a Windows `ds\COVID\x.png` lands in ds/COVID/
            target = dest.joinpath(*name.parts)
            with _member_errors(archive, info.filename), disk_errors(target):
                if kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                elif kind == "file":  # links inside the folder are checked but not recreated
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as source:
                        budget -= _copy_capped(
                            source, target, min(budget, info.file_size), archive, info.filename
                        )


def _tar_members(tf: tarfile.TarFile, archive: Path, limits: ExtractLimits) -> list:
    """Every member, checked as it is read: the caps stop a bomb before the whole (compressed)
    stream has been read, let alone written."""
    members, total = [], 0
    for member in tf:
        name = _safe_name(member.name, archive)
        if member.issym() or member.islnk():
            _check_link(name, member.linkname, archive, hard=member.islnk())
        elif not (member.isfile() or member.isdir()):
            raise ArchiveError(f"{archive}: member {member.name!r} is a device or fifo")
        member.name = name.as_posix()  # `\\` separators as folders, like zip
        members.append(member)
        total += member.size
        _check_totals(len(members), total, archive, limits)
    _check_ratio(str(archive), total, archive.stat().st_size, limits)
    return members


def _extract_tar(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    with _member_errors(archive, None), tarfile.open(archive) as tf:
        members = _tar_members(tf, archive, limits)
        try:
            with disk_errors(dest):  # a full disk is not a damaged archive
                tf.extractall(dest, members=members, filter="data")  # the stdlib's guard too
        except tarfile.FilterError as err:  # e.g. a link reached through another link
            member = err.tarinfo.name if err.tarinfo is not None else "?"
            raise ArchiveError(f"{archive}: member {member!r} refused ({err})") from None
        except (*READ_ERRORS, OSError) as err:
            raise ArchiveError(f"{archive}: damaged or unwritable tar member ({err})") from None


@contextmanager
def _member_errors(archive: Path, member: str | None) -> Iterator[None]:
    """A damaged archive's exceptions (bad CRC, lying sizes, truncated data) as ArchiveError."""
    where = f"member {member!r}" if member is not None else "its member list"
    try:
        yield
    except READ_ERRORS as err:
        raise ArchiveError(
            f"{archive}: {where} is damaged or unsupported ({type(err).__name__}: {err}); "
            "re-download or re-create the archive"
        ) from None
    except RuntimeError as err:  # zipfile: an encrypted member
        raise ArchiveError(f"{archive}: {where} cannot be read ({err})") from None
    except OSError as err:  # e.g. a file member where another member needs a folder
        raise ArchiveError(f"{archive}: {where} cannot be written ({err})") from None


def _clear(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def safe_extract(archive: Path, dest: Path, limits: ExtractLimits) -> Path:
    """Extract a zip or tar(.gz/.bz2/.xz) into the empty folder `dest` after checking every
    member; on any error `dest` is left empty again."""
    try:
        with disk_errors(dest):
            if zipfile.is_zipfile(archive):
                with _member_errors(archive, None):
                    _extract_zip(archive, dest, limits)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, dest, limits)
            else:
                raise ArchiveError(f"{archive}: not a zip or tar archive")
    except BaseException:
        _clear(dest)
        raise
    return dest

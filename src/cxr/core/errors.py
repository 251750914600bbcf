"""User-fixable errors: their messages name the file or params key and the fix."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable


class CxrError(Exception):
    """Bad input or configuration; reported without a traceback."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a CxrError, a failed file operation (OSError) or a tracking store
    that cannot be written ends it with one message naming the file, the cause and the fix,
    and exit status 1: never a traceback for what the user has to fix outside the code."""
    try:
        main()
    except CxrError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as err:
        if not _is_database_io_error(err):
            raise
        print(
            "error: the MLflow store could not be written (the database reports "
            f"{_first_line(err)!r}): the disk is full, failing or read-only, or a file-size "
            "limit was reached. Fix the disk or the limit (ulimit -f), or point "
            "MLFLOW_TRACKING_URI elsewhere, and re-run.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


# errno -> (what happened, what to do)
_OS_ERRORS = {
    errno.ENOSPC: (
        "no space left on the device",
        "free some space and re-run (temporary files go to $TMPDIR, the pixel store to "
        "$CXR_CACHE_DIR)",
    ),
    errno.EDQUOT: ("the disk quota is exceeded", "free some of your quota and re-run"),
    errno.EFBIG: (
        "the file grew past the file-size limit",
        "raise the limit (`ulimit -f unlimited`, or your job scheduler's file-size limit) or "
        "write to a file system that allows larger files, and re-run",
    ),
    errno.EIO: (
        "an input/output error (a failing disk or a dropped network mount)",
        "check the disk or mount (dmesg), and re-run",
    ),
    errno.EROFS: ("the file system is read-only", "run from a writable copy of the project"),
    errno.EACCES: ("permission denied", "fix the file's or folder's permissions and re-run"),
    errno.EPERM: ("the operation is not permitted", "fix the permissions and re-run"),
    errno.EMFILE: (
        "too many open files",
        "raise the limit (`ulimit -n 4096`) or lower train.num_workers, and re-run",
    ),
}


def describe_os_error(err: OSError) -> str:
    """An OSError as one sentence: the file, what the error number means, and the fix."""
    where = f"{err.filename}: " if err.filename else ""
    meaning, fix = _OS_ERRORS.get(
        err.errno or -1,
        (
            err.strerror or str(err),
            "check the file, the disk and its permissions, and re-run",
        ),
    )
    code = errno.errorcode.get(err.errno or -1, "")
    return f"{where}{meaning}{f' [{code}]' if code else ''}; {fix}."


def _is_database_io_error(err: Exception) -> bool:
    """SQLite's (and SQLAlchemy's wrapper of) failed writes: MLflow's local store."""
    kind = type(err)
    database = kind.__module__.startswith(("sqlite3", "sqlalchemy")) or kind.__name__ in (
        "OperationalError",
    )
    text = str(err).lower()
    return database and any(
        phrase in text
        for phrase in ("disk i/o error", "database or disk is full", "readonly database")
    )


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


class DataError(CxrError, ValueError):
    """Stage inputs that are missing, empty or inconsistent."""


class ConfigError(CxrError, ValueError):
    """A params value that cannot work on this machine or with this data."""


class DiskFullError(CxrError):
    """No space left on the device while writing a named file."""

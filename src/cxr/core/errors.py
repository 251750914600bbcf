"""User-fixable errors: their messages name the file or params key and the fix."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable


class CxrError(Exception):
    """Bad input or configuration; reported without a traceback."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a CxrError (or a full disk that nothing more specific reported)
    ends it with its message and exit status 1."""
    try:
        main()
    except CxrError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(
            f"error: no space left on the device{where}. Free some space and re-run "
            "(temporary files go to $TMPDIR, the pixel store to $CXR_CACHE_DIR).",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


class DataError(CxrError, ValueError):
    """Stage inputs that are missing, empty or inconsistent."""


class ConfigError(CxrError, ValueError):
    """A params value that cannot work on this machine or with this data."""


class DiskFullError(CxrError):
    """No space left on the device while writing a named file."""

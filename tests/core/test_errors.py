"""One error path for failed file and store writes (cxr.core.errors.run_stage): the file, what
the error number means, the fix; exit 1, no traceback. Real kernel errors where a test can
cause them: a file-size limit (EFBIG) on a file and on SQLite, MLflow's local store."""

from __future__ import annotations

import errno
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.core.errors import describe_os_error, run_stage

LIMIT = 64 * 1024  # bytes: RLIMIT_FSIZE of the child processes below

WRITE_FILE = """
from cxr.core.errors import run_stage
from cxr.core.fsio import write_json
run_stage(lambda: write_json({out!r}, {{"values": list(range(100_000))}}))
"""

WRITE_SQLITE = """
import sqlite3
from cxr.core.errors import run_stage
def main():
    db = sqlite3.connect({out!r})
    db.execute("create table runs (blob text)")
    for _ in range(100):
        db.execute("insert into runs values (?)", ("x" * 10_000,))
        db.commit()
run_stage(main)
"""


def limited(script: str, out: Path) -> subprocess.CompletedProcess[str]:
    """`script` in a child whose files may not grow past LIMIT (Python ignores SIGXFSZ, so a
    write past it fails with EFBIG, as under `ulimit -f`)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    return subprocess.run(
        [sys.executable, "-c", script.format(out=str(out))],
        capture_output=True,
        text=True,
        preexec_fn=cap,
    )


def test_file_size_limit_names_the_file_and_the_fix(tmp_path: Path) -> None:
    done = limited(WRITE_FILE, tmp_path / "report.json")
    assert done.returncode == 1, done.stderr
    out = tmp_path / "report.json"
    assert done.stderr.startswith(f"error: {out}: the file grew past the file-size limit [EFBIG]")
    assert "ulimit -f unlimited" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "report.json").exists()  # atomic: nothing half-written left


def test_tracking_store_write_failure_is_one_sentence(tmp_path: Path) -> None:
    done = limited(WRITE_SQLITE, tmp_path / "mlflow.db")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: the MLflow store could not be written"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "code, meaning",
    [
        (errno.EIO, "an input/output error"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.ENOSPC, "no space left on the device"),
        (errno.ENOTTY, "Inappropriate ioctl for device"),  # no entry: the system's own words
    ],
)
def test_each_error_number_gets_its_meaning_and_a_fix(
    code: int, meaning: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def stage() -> None:
        raise OSError(code, "system text", "data/raw/COVID/x.png")

    with pytest.raises(SystemExit) as caught:
        run_stage(stage)
    err = capsys.readouterr().err
    assert caught.value.code == 1
    expected = meaning if code != errno.ENOTTY else "system text"
    assert err.startswith(f"error: data/raw/COVID/x.png: {expected}"), err
    assert f"[{errno.errorcode[code]}]; " in err
    assert "re-run" in err or "writable" in err
    assert not describe_os_error(OSError(code, "t")).startswith(":")  # no file: no "None: "


def test_other_exceptions_still_show_their_traceback() -> None:
    """Bugs are not dressed up as user errors."""

    def stage() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_stage(stage)

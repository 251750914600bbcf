"""Atomic outputs: an interrupted write leaves the previous result, never a half one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cxr.core.errors import DiskFullError, run_stage
from cxr.core.fsio import atomic_dir, atomic_file, partial_path, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as scratch:
        (scratch / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(final) as scratch:
        (scratch / "a.txt").write_text("half")
        raise RuntimeError("killed mid-stage")
    assert (final / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no scratch left


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_atomic_file_clears_a_killed_writers_partial_but_not_a_live_ones(tmp_path: Path) -> None:
    final = tmp_path / "metrics.json"
    killed = partial_path(final, pid=dead_pid())
    killed.write_text("left by a killed run")
    legacy = tmp_path / ".metrics.json.partial"  # the fixed name of earlier versions
    legacy.write_text("left by an older version")
    live = partial_path(final)  # this process: alive, so possibly still writing
    live.write_text("being written")
    with atomic_file(final) as scratch:
        assert scratch not in (killed, live)  # a name of its own
        scratch.write_text("{}")
    assert final.read_text() == "{}"
    assert not killed.exists() and not legacy.exists()
    assert live.read_text() == "being written"


def test_scratch_names_are_unique(tmp_path: Path) -> None:
    final = tmp_path / "a.u8"
    assert len({partial_path(final) for _ in range(100)}) == 100


def test_disk_full_names_the_output(tmp_path: Path) -> None:
    # issue 16, case 8: ENOSPC from the kernel (/dev/full answers every write with it)
    final = tmp_path / "store.u8"
    with (
        pytest.raises(DiskFullError, match=r"store\.u8: no space left on the device"),
        atomic_file(final) as scratch,
        open("/dev/full", "wb") as full,
    ):
        scratch.write_bytes(b"partial")
        full.write(b"x" * (1 << 20))
        full.flush()
    assert list(tmp_path.iterdir()) == []  # the scratch is gone, nothing looks complete


def test_stage_reports_disk_full_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def stage() -> None:
        with open("/dev/full", "wb") as full:
            full.write(b"x" * (1 << 20))

    with pytest.raises(SystemExit) as caught:
        run_stage(stage)
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device")
    assert "Traceback" not in err


def test_write_json_is_stable(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"b": 1.0, "a": {"d": 2, "c": 3}})
    write_json(tmp_path / "b.json", {"a": {"c": 3, "d": 2}, "b": 1.0})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()

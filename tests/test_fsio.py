"""Atomic outputs: an interrupted write leaves the previous result, never a half one."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.fsio import atomic_dir, atomic_file, partial_path, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as scratch:
        (scratch / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(final) as scratch:
        (scratch / "a.txt").write_text("half")
        raise RuntimeError("killed mid-stage")
    assert (final / "a.txt").read_text() == "first"
    assert not partial_path(final).exists()


def test_atomic_file_clears_a_stale_partial(tmp_path: Path) -> None:
    final = tmp_path / "metrics.json"
    partial_path(final).write_text("left by a killed run")
    with atomic_file(final) as scratch:
        scratch.write_text("{}")
    assert final.read_text() == "{}"
    assert not partial_path(final).exists()


def test_write_json_is_stable(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"b": 1.0, "a": {"d": 2, "c": 3}})
    write_json(tmp_path / "b.json", {"a": {"c": 3, "d": 2}, "b": 1.0})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()

"""The data stages under real DVC: reproducible augmented files, and links instead of copies."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.helpers.project import run, set_params, tree_hashes


def tiny_params(project: Path) -> None:
    set_params(project, {"data.synthetic.n_images": 120, "data.synthetic.image_size": 64})


def assert_linked(project: Path, originals_only: bool = False) -> None:
    """Workspace data files share their inode with the DVC cache: links, not second copies."""
    for folder in ("raw", "split/train", "augmented/train"):
        files = sorted((project / "data" / folder).rglob("*.png"))
        files = [f for f in files if not (originals_only and "__aug" in f.name)]
        assert files, folder
        for sample in files:
            digest = hashlib.md5(sample.read_bytes()).hexdigest()
            cached = project / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
            assert os.path.samefile(sample, cached), f"{sample}: a copy, not a link"


@pytest.mark.e2e
def test_repro_force_twice_gives_identical_augmented_files(project_copy: Path) -> None:
    tiny_params(project_copy)
    # cache.type "hardlink,reflink,copy": new outputs are hard-linked into the cache.
    assert run(["dvc", "config", "cache.type"], project_copy).stdout.strip().startswith("hardlink")
    run(["dvc", "repro", "augment"], project_copy)
    first = tree_hashes(project_copy / "data" / "augmented")
    assert any("__aug" in name for name in first)
    # Files passed on unchanged (raw -> split -> augmented originals) are one inode. An
    # augmented output can equal an existing object (every op skipped by its probability);
    # DVC then leaves a copy, so outputs are checked after the relink below.
    assert_linked(project_copy, originals_only=True)

    run(["dvc", "repro", "--force", "augment"], project_copy)
    assert tree_hashes(project_copy / "data" / "augmented") == first
    # Outputs identical to cached objects come back as copies (DVC links only new objects);
    # `dvc checkout --relink` turns them back into links, as the README says.
    run(["dvc", "checkout", "--relink", "--with-deps", "augment"], project_copy)
    assert_linked(project_copy)
    assert "up to date" in run(["dvc", "status", "augment"], project_copy).stdout

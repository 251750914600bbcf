"""Hard links instead of copies for data files that later stages pass on unchanged.

The split and augment stages hand on most files byte for byte (raw -> split -> augmented).
Linking them keeps one copy on disk, and since DVC hard-links its cache too
(`cache.type` in .dvc/config), a file that appears in raw, split and augmented is stored
once. Every stage writes new files and never edits one in place, which is what makes
sharing an inode safe. Falls back to a copy across file systems or where links fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` at `target`, or copy it where the file system refuses."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def link_tree(source: Path, target: Path) -> None:
    """Mirror `source` at `target` (folders made, files hard-linked)."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, destination)

"""Source folders made from the shared real X-rays for a test: links, never copies, in the
Kaggle layout with the manifest's rows for the images they hold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd


def linked_subset(source: Path, dest: Path, keep: Callable[[pd.DataFrame], pd.Series]) -> Path:
    """`dest` holding the images (and masks) of `source` whose manifest rows `keep` selects,
    as symbolic links, with those rows as its manifest.csv."""
    manifest = pd.read_csv(source / "manifest.csv", keep_default_na=False, dtype=str)
    rows = manifest[keep(manifest)]
    for file, mask in zip(rows["file"], rows["mask"], strict=True):
        for name in (file, mask):
            if name:
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                (dest / name).symlink_to((source / name).resolve())
    rows.to_csv(dest / "manifest.csv", index=False)
    return dest

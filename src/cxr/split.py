"""The split stage: train/val/test folders through split-folders, free of duplicate leakage.

split-folders does the seeded, per-class (stratified) split. We hand it a grouping function so
that files with identical content (same sha256 in the manifest) form one unit that lands in a
single split: a duplicate in train and test would inflate test scores.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd
import splitfolders

from cxr.config import SplitConfig
from cxr.errors import CxrError
from cxr.fsio import atomic_dir, sorted_dirs, sorted_files

SPLITS = ("train", "val", "test")


class SplitError(CxrError, ValueError):
    """The requested split cannot be made from this data; the message names the key."""


def duplicate_groups(manifest: pd.DataFrame) -> dict[str, str]:
    """Map each image (`<Class>/<name>`) to the key of its duplicate group (its sha256)."""
    return dict(zip(manifest["file"], manifest["sha256"], strict=True))


def _grouper(group_of: dict[str, str]):
    """split-folders `group=` callable: one tuple per duplicate group, in a stable order."""

    def group(files: list[Path]) -> list[tuple[Path, ...]]:
        members: dict[str, list[Path]] = defaultdict(list)
        for path in files:
            key = f"{path.parent.name}/{path.name}"
            members[group_of.get(key, key)].append(path)
        return sorted(tuple(sorted(paths)) for paths in members.values())

    return group


def split_counts(split_dir: Path) -> dict[str, dict[str, int]]:
    return {
        split: {
            class_dir.name: len(sorted_files(class_dir))
            for class_dir in sorted_dirs(split_dir / split)
        }
        for split in SPLITS
        if (split_dir / split).is_dir()
    }


def _check_every_class_everywhere(counts: dict[str, dict[str, int]], cfg: SplitConfig) -> None:
    classes = sorted({name for per_class in counts.values() for name in per_class})
    key = "split.ratio" if cfg.mode == "ratio" else "split.fixed"
    for split in SPLITS:
        for name in classes:
            if counts.get(split, {}).get(name, 0) == 0:
                total = sum(counts[s].get(name, 0) for s in counts)
                raise SplitError(
                    f"{key}: class {name!r} has {total} images, which leaves none for the "
                    f"{split} split. Give that split a larger share, or add images."
                )


def _cross_class_duplicates(manifest: pd.DataFrame) -> int:
    classes_per_hash = manifest.groupby("sha256")["class"].nunique()
    return int((classes_per_hash > 1).sum())


def split_dataset(raw: Path, manifest_csv: Path, out: Path, cfg: SplitConfig) -> dict:
    """Split `raw` into `out/{train,val,test}/<Class>`; return the split's metrics."""
    manifest = pd.read_csv(manifest_csv, keep_default_na=False)
    group = _grouper(duplicate_groups(manifest))
    with atomic_dir(out) as scratch:
        if cfg.mode == "ratio":
            splitfolders.ratio(
                str(raw), output=str(scratch), seed=cfg.seed, ratio=cfg.ratio, group=group
            )
        else:
            for class_dir in sorted_dirs(raw):
                needed = sum(cfg.fixed) + 1
                if len(sorted_files(class_dir)) < needed:
                    raise SplitError(
                        f"split.fixed: class {class_dir.name!r} has "
                        f"{len(sorted_files(class_dir))} images; {list(cfg.fixed)} for val and "
                        f"test needs at least {needed} (one left for train). Lower split.fixed "
                        "or use split.mode: ratio."
                    )
            splitfolders.fixed(
                str(raw), output=str(scratch), seed=cfg.seed, fixed=cfg.fixed, group=group
            )
        counts = split_counts(scratch)
        _check_every_class_everywhere(counts, cfg)

    sizes = manifest.groupby("sha256").size()
    return {
        "splits": counts,
        "totals": {split: sum(per_class.values()) for split, per_class in counts.items()},
        "duplicates": {
            "exact_groups": int((sizes > 1).sum()),
            "files_in_exact_groups": int(sizes[sizes > 1].sum()),
            "cross_class_groups": _cross_class_duplicates(manifest),
        },
    }

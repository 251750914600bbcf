"""The split stage: train/val/test folders through split-folders, free of leakage.

split-folders does the seeded, per-class (stratified) split. We hand it a grouping function so
that each leakage group lands in a single split: images of one patient (`split.group_by`, a
column of the source's metadata CSV), and duplicates — identical content (same sha256 in the
manifest) or near-identical (perceptual hashes within `split.near_duplicate_distance` bits, see
`cxr.data.dedupe`). One person (or one picture) in train and test would inflate test scores.
split-folders splits each class on its own, so a group spanning two classes (the same image
under two labels, or a patient with images of two classes) is then moved whole into the split
holding most of its members.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pandas as pd
import splitfolders

from cxr.core.config import SplitConfig
from cxr.data.dedupe import group_labels, merge_by_key
from cxr.core.errors import CxrError
from cxr.core.fsio import atomic_dir, sorted_dirs, sorted_files, write_csv
from cxr.data.links import link_tree

SPLITS = ("train", "val", "test")


class SplitError(CxrError, ValueError):
    """The requested split cannot be made from this data; the message names the key."""


def duplicate_groups(
    manifest: pd.DataFrame, max_distance: int | None
) -> tuple[pd.Series, set[int]]:
    """Each image's (`<Class>/<name>`) duplicate-group label (its first member's row), and
    the labels of groups that near-duplicate links made."""
    labels, near = group_labels(list(manifest["sha256"]), list(manifest["phash"]), max_distance)
    return pd.Series(labels, index=manifest["file"], name="group"), near


def group_keys(manifest: pd.DataFrame, metadata: pd.DataFrame, column: str) -> list[str]:
    """The `column` value of every manifest image ("" where the metadata has none)."""
    if column not in metadata.columns:
        available = [c for c in metadata.columns if c not in ("file", "source_file")]
        if not available:
            raise SplitError(
                f"split.group_by: {column!r}, but the source has no metadata CSV (data.metadata "
                "names it, at the source's root, with a `file` column of image paths). Add one "
                "that names each image's patient, or set split.group_by: '' to split image by "
                "image (then one patient's images can land in train and test)."
            )
        raise SplitError(
            f"split.group_by: no column {column!r} in the source's metadata; it has {available}."
        )
    values = metadata.set_index("file")[column]
    return [str(values.get(file, "")) for file in manifest["file"]]


def check_grouping(manifest: pd.DataFrame, keys: list[str], column: str) -> list[str]:
    """Refuse grouping that is silently off: a class none of whose images has a `column`
    value (its metadata rows name none of its images: a wrong path layout, most often). Return
    warnings for images without a value in classes that have some, each split on its own."""
    frame = pd.DataFrame(
        {"class": manifest["class"].to_numpy(), "source": manifest["source"], "key": keys}
    )
    for name, rows in frame.groupby("class", sort=True):
        if (rows["key"] == "").all():
            examples = ", ".join(rows["source"].head(3))
            raise SplitError(
                f"split.group_by: {column!r}: none of the {len(rows)} {name} images has a "
                f"value, so they would be split image by image and one patient could land in "
                f"train and test. The metadata CSV (data.metadata) must name each image by its "
                f"path in the source folder, as the images are laid out there (e.g. {examples}); "
                "check its `file` column against that layout (the download stage warned about "
                "the rows it could not match), or set split.group_by: '' to split image by image."
            )
    missing = frame[frame["key"] == ""]
    if missing.empty:
        return []
    counts = ", ".join(f"{name} {n}" for name, n in missing.groupby("class").size().items())
    return [
        f"split.group_by: {column!r}: {len(missing)} of {len(frame)} images have no value "
        f"({counts}; e.g. {', '.join(missing['source'].head(3))}); each is split on its own"
    ]


def leakage_groups(
    manifest: pd.DataFrame, metadata: pd.DataFrame, duplicates: pd.Series, cfg: SplitConfig
) -> tuple[pd.Series, dict[str, object]]:
    """Duplicate groups merged with `split.group_by` groups (one unit per connected
    component), and the grouping's summary."""
    group_of = duplicates
    summary: dict[str, object] = {"by": cfg.group_by}
    if cfg.group_by:
        keys = group_keys(manifest, metadata, cfg.group_by)
        summary["warnings"] = check_grouping(manifest, keys, cfg.group_by)
        merged = merge_by_key(list(duplicates), keys)
        group_of = pd.Series(merged, index=duplicates.index, name="group")
        present = [key for key in keys if key]
        summary[f"{cfg.group_by}_values"] = len(set(present))
        summary["images_without_value"] = len(keys) - len(present)
    sizes = group_of.value_counts()
    summary.update(
        {
            "units": len(sizes),  # what split-folders places: groups and single images
            "multi_image_units": int((sizes > 1).sum()),
            "largest_unit": int(sizes.max()) if len(sizes) else 0,
        }
    )
    return group_of, summary


def duplicate_summary(
    manifest: pd.DataFrame, group_of: pd.Series, near: set[int], max_distance: int | None
) -> dict[str, int]:
    """Counts of duplicate groups and of the files merged into them, for reports/data.json."""
    frame = manifest.assign(group=group_of.to_numpy())
    sizes = frame.groupby("group").size()
    multi = sizes[sizes > 1]
    exact = manifest.groupby("sha256").size()
    return {
        "exact_groups": int((exact > 1).sum()),
        "near_groups": len(near),
        "groups": len(multi),
        "files_in_groups": int(multi.sum()),
        "files_merged": int((multi - 1).sum()),  # files that travel with another one
        "cross_class_groups": int((frame.groupby("group")["class"].nunique() > 1).sum()),
        "near_duplicate_distance": -1 if max_distance is None else max_distance,
    }


def _grouper(group_of: dict[str, int]):
    """split-folders `group=` callable: one tuple per duplicate group, in a stable order."""

    def group(files: list[Path]) -> list[tuple[Path, ...]]:
        members: dict[object, list[Path]] = defaultdict(list)
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


def split_of_files(split_dir: Path) -> dict[str, str]:
    """`<Class>/<name>` -> the split it landed in."""
    return {
        f"{class_dir.name}/{path.name}": split
        for split in SPLITS
        if (split_dir / split).is_dir()
        for class_dir in sorted_dirs(split_dir / split)
        for path in sorted_files(class_dir)
    }


def reunite_groups(split_dir: Path, group_of: pd.Series) -> int:
    """Move every member of a group that straddles splits (only cross-class groups can) into
    the split holding most of its members (ties: train, then val, then test); return the
    number of files moved."""
    where = pd.Series(split_of_files(split_dir), name="split")
    frame = pd.DataFrame({"group": group_of}).join(where, how="inner")
    moved = 0
    for _, members in frame.groupby("group", sort=True):
        if members["split"].nunique() < 2:
            continue
        votes = members["split"].value_counts()
        home = min(votes.index, key=lambda split: (-votes[split], SPLITS.index(split)))
        for file, split in members["split"].items():
            if split != home:
                (split_dir / home / file).parent.mkdir(parents=True, exist_ok=True)
                (split_dir / split / file).rename(split_dir / home / file)
                moved += 1
    return moved


def _check_fixed_feasible(raw: Path, fixed: tuple[int, int]) -> None:
    needed = sum(fixed) + 1
    for class_dir in sorted_dirs(raw):
        have = len(sorted_files(class_dir))
        if have < needed:
            raise SplitError(
                f"split.fixed: class {class_dir.name!r} has {have} images; {list(fixed)} for "
                f"val and test needs at least {needed} (one left for train). Lower split.fixed "
                "or use split.mode: ratio."
            )


def _run_splitfolders(raw: Path, scratch: Path, cfg: SplitConfig, group) -> None:
    """split-folders *moves* files out of a hard-linked mirror of `raw`, so the split files
    are links to the raw ones (no second copy on disk) and `raw` itself is never touched."""
    if cfg.mode == "fixed":
        _check_fixed_feasible(raw, cfg.fixed)
    staging = scratch.with_name(".split-staging")  # a fixed name: a stale one is replaced
    shutil.rmtree(staging, ignore_errors=True)
    link_tree(raw, staging)
    try:
        if cfg.mode == "ratio":
            splitfolders.ratio(
                str(staging), str(scratch), seed=cfg.seed, ratio=cfg.ratio, group=group, move=True
            )
        else:
            splitfolders.fixed(
                str(staging), str(scratch), seed=cfg.seed, fixed=cfg.fixed, group=group, move=True
            )
    finally:
        shutil.rmtree(staging)


def distribution_rows(counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """One row per (split, class) for the class-distribution bar plot."""
    rows = [
        {"split": split, "class": name, "label": f"{split} / {name}", "images": count}
        for split in SPLITS
        for name, count in sorted(counts.get(split, {}).items())
    ]
    return pd.DataFrame(rows, columns=["split", "class", "label", "images"])


def split_dataset(
    raw: Path,
    manifest_csv: Path,
    metadata_csv: Path,
    out: Path,
    cfg: SplitConfig,
    plot_csv: Path | None = None,
) -> dict:
    """Split `raw` into `out/{train,val,test}/<Class>`; return the split's metrics."""
    manifest = pd.read_csv(manifest_csv, keep_default_na=False, dtype={"phash": str})
    metadata = pd.read_csv(metadata_csv, keep_default_na=False, dtype=str)
    duplicates, near = duplicate_groups(manifest, cfg.near_duplicate_distance)
    group_of, grouping = leakage_groups(manifest, metadata, duplicates, cfg)
    with atomic_dir(out) as scratch:
        _run_splitfolders(raw, scratch, cfg, _grouper(group_of.to_dict()))
        moved = reunite_groups(scratch, group_of)
        counts = split_counts(scratch)
        _check_every_class_everywhere(counts, cfg)
    if plot_csv is not None:
        write_csv(plot_csv, distribution_rows(counts))
    return {
        "splits": counts,
        "totals": {split: sum(per_class.values()) for split, per_class in counts.items()},
        "duplicates": duplicate_summary(manifest, duplicates, near, cfg.near_duplicate_distance),
        "groups": {**grouping, "files_moved_to_reunite_groups": moved},
    }

"""The download stage: fetch a data source and ingest it into `data/raw` + `data/masks`.

A source is resolved by the form of `data.source` (see `SOURCE_KINDS`) into a local folder in
one of the known layouts; ingestion is then the same for every source: each image is fully
decoded, converted to 8-bit grayscale and written as PNG under `<Class>/<stem>.png`, its mask
(if the layout has masks) under the same name in the masks folder, and a manifest row records
both. The source folder itself is only ever read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr import synthetic
from cxr.config import DataConfig
from cxr.errors import CxrError
from cxr.fsio import atomic_dir, sha256_file, sorted_dirs, sorted_files, write_csv
from cxr.images import BadImageError, read_gray8, read_mask, save_png
from cxr.parallel import ordered_map

MANIFEST_COLUMNS = ["file", "class", "sha256", "bytes", "width", "height", "source", "mask"]


class SourceError(CxrError, ValueError):
    """The configured data source is missing or not in a known layout."""


@dataclass(frozen=True)
class ClassFolder:
    """One class of a source: where its images are and, in the Kaggle layout, its masks."""

    name: str
    images: Path
    masks: Path | None


# ---------------------------------------------------------------- sources -> a local folder


@contextmanager
def _synthetic_folder(cfg: DataConfig, root: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cxr-synthetic-") as scratch:
        folder = Path(scratch)
        synthetic.generate(
            folder, cfg.synthetic.n_images, cfg.synthetic.image_size, cfg.synthetic.seed
        )
        yield folder


@contextmanager
def _local_folder(cfg: DataConfig, root: Path) -> Iterator[Path]:
    folder = Path(cfg.source).expanduser()
    folder = folder if folder.is_absolute() else root / folder
    if not folder.is_dir():
        raise SourceError(
            f"data.source: folder {folder} does not exist. Point data.source at a folder of "
            "class sub-folders (or the Kaggle database's <Class>/images layout), or use "
            "'synthetic' for the embedded sample."
        )
    yield folder


SourceOpener = Callable[[DataConfig, Path], AbstractContextManager[Path]]

# (predicate on data.source, opener); the first match wins, the last is the catch-all.
SOURCE_KINDS: list[tuple[str, Callable[[str], bool], SourceOpener]] = [
    ("synthetic", lambda source: source == "synthetic", _synthetic_folder),
    ("folder", lambda source: True, _local_folder),
]


def source_kind(source: str) -> tuple[str, SourceOpener]:
    for name, matches, opener in SOURCE_KINDS:
        if matches(source):
            return name, opener
    raise SourceError(f"data.source: no source kind accepts {source!r}")


# ---------------------------------------------------------------- layout detection


def detect_layout(folder: Path, extensions: tuple[str, ...]) -> list[ClassFolder]:
    """Class folders of `folder`, sorted by name: Kaggle (`<Class>/images`) or flat."""
    classes = []
    for class_dir in sorted_dirs(folder):
        images = class_dir / "images"
        if images.is_dir():  # the Kaggle database's layout
            masks = class_dir / "masks"
            classes.append(ClassFolder(class_dir.name, images, masks if masks.is_dir() else None))
        elif sorted_files(class_dir, extensions):
            classes.append(ClassFolder(class_dir.name, class_dir, None))
        else:
            raise SourceError(
                f"{class_dir}: class folder holds no images with extensions "
                f"{list(extensions)} (nor an images/ sub-folder). Remove it or add its images."
            )
    if len(classes) < 2:
        raise SourceError(
            f"{folder}: found {len(classes)} class folder(s); a classifier needs at least two "
            "(expected <Class>/*.png or <Class>/images/*.png)."
        )
    for entry in classes:
        if not sorted_files(entry.images, extensions):
            raise SourceError(f"{entry.images}: class {entry.name!r} has no images.")
    return classes


# ---------------------------------------------------------------- ingestion


@dataclass(frozen=True)
class _IngestItem:
    class_name: str
    source: Path
    source_name: str  # relative to the source folder: independent of where it is mounted
    mask: Path | None
    image_out: Path
    mask_out: Path | None


def _ingest_one(item: _IngestItem) -> dict[str, object]:
    image = read_gray8(item.source)
    save_png(image, item.image_out)
    mask_name = ""
    if item.mask is not None and item.mask_out is not None:
        mask = read_mask(item.mask)
        if mask.size != image.size:
            raise BadImageError(
                f"{item.mask}: mask is {mask.size[0]}x{mask.size[1]} but its image is "
                f"{image.size[0]}x{image.size[1]}"
            )
        save_png(mask, item.mask_out)
        mask_name = f"{item.class_name}/{item.mask_out.name}"
    return {
        "file": f"{item.class_name}/{item.image_out.name}",
        "class": item.class_name,
        "sha256": sha256_file(item.image_out),
        "bytes": item.image_out.stat().st_size,
        "width": image.size[0],
        "height": image.size[1],
        "source": item.source_name,
        "mask": mask_name,
    }


def _plan(
    classes: list[ClassFolder], extensions: tuple[str, ...], folder: Path, raw: Path, masks: Path
) -> list[_IngestItem]:
    items: list[_IngestItem] = []
    for entry in classes:
        (raw / entry.name).mkdir()
        if entry.masks is not None:
            (masks / entry.name).mkdir()
        seen: dict[str, Path] = {}
        for path in sorted_files(entry.images, extensions):
            out_name = f"{path.stem}.png"
            if out_name in seen:
                raise SourceError(
                    f"{path} and {seen[out_name]} would both become {entry.name}/{out_name}; "
                    "rename one of them."
                )
            seen[out_name] = path
            mask = entry.masks / path.name if entry.masks is not None else None
            has_mask = mask is not None and mask.is_file()
            items.append(
                _IngestItem(
                    class_name=entry.name,
                    source=path,
                    source_name=path.relative_to(folder).as_posix(),
                    mask=mask if has_mask else None,
                    image_out=raw / entry.name / out_name,
                    mask_out=masks / entry.name / out_name if has_mask else None,
                )
            )
    return items


def ingest(
    folder: Path, extensions: tuple[str, ...], raw: Path, masks: Path, workers: int | None = None
) -> pd.DataFrame:
    """Decode, convert and write every image (and mask) of `folder`; return the manifest."""
    classes = detect_layout(folder, extensions)
    items = _plan(classes, extensions, folder, raw, masks)
    return pd.DataFrame(ordered_map(_ingest_one, items, workers), columns=MANIFEST_COLUMNS)


def fetch(cfg: DataConfig, root: Path, raw: Path, masks: Path, manifest: Path) -> dict:
    """Run the download stage; return its summary metrics."""
    kind, opener = source_kind(cfg.source)
    with opener(cfg, root) as folder, atomic_dir(raw) as raw_tmp, atomic_dir(masks) as masks_tmp:
        frame = ingest(folder, cfg.extensions, raw_tmp, masks_tmp)
        write_csv(manifest, frame)  # paths relative to the raw and masks folders
    per_class = frame.groupby("class").size()
    with_mask = frame[frame["mask"] != ""].groupby("class").size()
    return {
        "source_kind": kind,
        "images": len(frame),
        "classes": {name: int(per_class[name]) for name in per_class.index},
        "masks": {name: int(with_mask.get(name, 0)) for name in per_class.index},
    }

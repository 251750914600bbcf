"""The download stage: fetch a data source and ingest it into `data/raw` + `data/masks`.

A source is resolved by the form of `data.source` (see `SOURCE_KINDS`) into a local folder in
one of the known layouts; ingestion is then the same for every source: each image is fully
decoded, converted to 8-bit grayscale and written as PNG under `<Class>/<stem>.png`, its mask
(if the layout has masks) under the same name in the masks folder, and a manifest row records
both. The source folder itself is only ever read.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from cxr.data import synthetic
from cxr.data.archives import ExtractLimits, download, safe_extract
from cxr.core.config import DataConfig
from cxr.data.dedupe import phash_hex
from cxr.core.errors import CxrError
from cxr.core.fsio import atomic_dir, sha256_file, sorted_dirs, sorted_files, write_csv
from cxr.data.images import BadImageError, read_gray8, read_mask, save_png
from cxr.core.parallel import ordered_map
from cxr.core.urls import redact_url

MANIFEST_COLUMNS = [
    "file", "class", "sha256", "phash", "bytes", "width", "height", "source", "mask"
]  # fmt: skip
REJECTED_COLUMNS = ["source", "class", "reason"]
# Folders that archive tools add and that are never classes.
IGNORED_DIRS = frozenset({"__MACOSX"})


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
    check_source(cfg, root)
    yield _resolve(cfg.source, root)


def _limits(cfg: DataConfig) -> ExtractLimits:
    archive = cfg.archive
    return ExtractLimits(archive.max_files, archive.max_mb * 1024 * 1024, archive.max_ratio)


@contextmanager
def _extracted(archive: Path, cfg: DataConfig) -> Iterator[Path]:
    """A scratch folder holding the archive's checked contents; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="cxr-extract-") as scratch:
        yield safe_extract(archive, Path(scratch), _limits(cfg))


@contextmanager
def _local_archive(cfg: DataConfig, root: Path) -> Iterator[Path]:
    check_source(cfg, root)
    with _extracted(_resolve(cfg.source, root), cfg) as folder:
        yield folder


def _require_sha256(cfg: DataConfig) -> None:
    raise SourceError(
        f"data.archive.sha256: required for a URL source ({redact_url(cfg.source)}); set "
        "it to the archive's sha256 (`sha256sum file.zip`), so a changed file cannot slip in."
    )


@contextmanager
def _http_archive(cfg: DataConfig, root: Path) -> Iterator[Path]:
    if not cfg.archive.sha256:
        _require_sha256(cfg)
    with tempfile.TemporaryDirectory(prefix="cxr-download-") as scratch:
        archive = download(
            cfg.source,
            Path(scratch) / "archive",
            cfg.archive.sha256,
            retries=cfg.archive.retries,
            timeout=cfg.archive.timeout_s,
            max_bytes=_limits(cfg).max_bytes,
        )
        with _extracted(archive, cfg) as folder:
            yield folder


KAGGLE_ENV = ("KAGGLE_USERNAME", "KAGGLE_KEY")


def kaggle_credentials_present(env: dict[str, str] | None = None) -> bool:
    """Whether the Kaggle client will find credentials (env vars or kaggle.json)."""
    env = dict(os.environ) if env is None else env
    if all(env.get(name) for name in KAGGLE_ENV) or env.get("KAGGLE_API_TOKEN"):
        return True
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


@contextmanager
def _kaggle_dataset(cfg: DataConfig, root: Path) -> Iterator[Path]:
    dataset = cfg.source.removeprefix("kaggle:")
    if not kaggle_credentials_present():
        raise SourceError(
            f"data.source {cfg.source}: no Kaggle credentials. Set KAGGLE_USERNAME and "
            "KAGGLE_KEY, or put kaggle.json in ~/.kaggle (or $KAGGLE_CONFIG_DIR)."
        )
    # Imported here: the client authenticates at import time.
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    with tempfile.TemporaryDirectory(prefix="cxr-kaggle-") as scratch:
        try:
            api.authenticate()
            api.dataset_download_files(dataset, path=scratch, quiet=True, unzip=False)
        except (Exception, SystemExit) as err:  # its messages may echo request data: not shown
            raise SourceError(
                f"data.source {cfg.source}: Kaggle download failed ({type(err).__name__}). "
                "Check the dataset name and that your account accepted its terms."
            ) from None
        archives = sorted(Path(scratch).glob("*.zip"))
        if len(archives) != 1:
            raise SourceError(f"data.source {cfg.source}: Kaggle returned no single zip file")
        with _extracted(archives[0], cfg) as folder:
            yield folder


def _resolve(source: str, root: Path) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() else root / path


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

SourceOpener = Callable[[DataConfig, Path], AbstractContextManager[Path]]

# (name, predicate on data.source, opener); the first match wins, the last is the catch-all.
SOURCE_KINDS: list[tuple[str, Callable[[str], bool], SourceOpener]] = [
    ("synthetic", lambda source: source == "synthetic", _synthetic_folder),
    ("kaggle", lambda source: source.startswith("kaggle:"), _kaggle_dataset),
    ("http", lambda source: source.startswith(("http://", "https://")), _http_archive),
    ("archive", lambda source: source.lower().endswith(ARCHIVE_SUFFIXES), _local_archive),
    ("folder", lambda source: True, _local_folder),
]


def source_kind(source: str) -> tuple[str, SourceOpener]:
    for name, matches, opener in SOURCE_KINDS:
        if matches(source):
            return name, opener
    raise SourceError(f"data.source: no source kind accepts {source!r}")


def check_source(cfg: DataConfig, root: Path) -> None:
    """The cheap part of opening a source, for the `params` stage: a local folder or archive
    must exist, a URL must come with its sha256 (it and a Kaggle dataset are only fetched when
    downloaded)."""
    kind, _ = source_kind(cfg.source)
    path = _resolve(cfg.source, root)
    if kind == "folder" and not path.is_dir():
        raise SourceError(
            f"data.source: folder {path} does not exist. Point data.source at a folder of "
            "class sub-folders (or the Kaggle database's <Class>/images layout), or use "
            "'synthetic' for the embedded sample."
        )
    if kind == "archive" and not path.is_file():
        raise SourceError(f"data.source: archive {path} does not exist.")
    if kind == "http" and not cfg.archive.sha256:
        _require_sha256(cfg)


# ---------------------------------------------------------------- layout detection


def _class_dirs(folder: Path) -> list[Path]:
    return [d for d in sorted_dirs(folder) if d.name not in IGNORED_DIRS]


def _is_class_dir(folder: Path, extensions: tuple[str, ...]) -> bool:
    return (folder / "images").is_dir() or bool(sorted_files(folder, extensions))


def dataset_root(folder: Path, extensions: tuple[str, ...]) -> Path:
    """`folder`, or its single sub-folder when the classes are nested one level below it
    (`COVID-19_Radiography_Dataset/<Class>/...`, as archives usually unpack)."""
    subdirs = _class_dirs(folder)
    if len(subdirs) == 1 and not _is_class_dir(subdirs[0], extensions):
        return subdirs[0]
    return folder


def detect_layout(
    folder: Path,
    extensions: tuple[str, ...],
    aliases: dict[str, str] | None = None,
    min_classes: int = 2,
) -> list[ClassFolder]:
    """Class folders of `folder`, sorted by folder name: Kaggle (`<Class>/images`) or flat.

    Class names go through `aliases` (folder name -> class name); loose files next to the class
    folders (READMEs, metadata sheets) are ignored. A training source needs two classes; a
    folder that is only scored (evaluate.external) may hold one (`min_classes`).
    """
    aliases = aliases or {}
    folder = dataset_root(folder, extensions)
    classes = []
    for class_dir in _class_dirs(folder):
        name = aliases.get(class_dir.name, class_dir.name)
        images = class_dir / "images"
        if images.is_dir():  # the Kaggle database's layout
            masks = class_dir / "masks"
            classes.append(ClassFolder(name, images, masks if masks.is_dir() else None))
        elif sorted_files(class_dir, extensions):
            classes.append(ClassFolder(name, class_dir, None))
        else:
            raise SourceError(
                f"{class_dir}: class folder holds no images with extensions "
                f"{list(extensions)} (nor an images/ sub-folder). Remove it or add its images."
            )
    if len({entry.name for entry in classes}) < min_classes:
        raise SourceError(
            f"{folder}: found {len(classes)} class folder(s); a classifier needs at least two "
            "(expected <Class>/*.png or <Class>/images/*.png)."
        )
    for entry in classes:
        if not sorted_files(entry.images, extensions):
            raise SourceError(f"{entry.images}: class {entry.name!r} has no images.")
    return classes


# ---------------------------------------------------------------- ingestion


# The zlib level of data/raw's PNGs. PNG is lossless at every level, so the pixels, and all
# that is computed from them, are the same. Encoding at PIL's default (6) was most of the
# download stage's time: at level 1 the stage's ingest of cxrmix ran 2.49 times as fast, for
# files 1.17 times the size (benchmarks/ingest_throughput.py).
RAW_PNG_LEVEL = 1


@dataclass(frozen=True)
class _IngestItem:
    class_name: str
    source: Path
    source_name: str  # relative to the source folder: independent of where it is mounted
    mask: Path | None
    image_out: Path
    mask_out: Path | None
    min_side: int
    png_level: int


def _read_pair(item: _IngestItem):
    image = read_gray8(item.source)
    if min(image.size) < item.min_side:
        raise BadImageError(
            f"{item.source}: only {image.size[0]}x{image.size[1]} px, below data.min_side="
            f"{item.min_side} (a thumbnail or a broken export?)"
        )
    if item.mask is None:
        return image, None
    mask = read_mask(item.mask)
    if mask.size != image.size:
        raise BadImageError(
            f"{item.mask}: mask is {mask.size[0]}x{mask.size[1]} but its image is "
            f"{image.size[0]}x{image.size[1]}"
        )
    return image, mask


def _ingest_one(item: _IngestItem) -> dict[str, object]:
    """Decode, check and write one image (and mask): a manifest row, or a rejection row
    (`reason` set) when the image or its mask is unusable. Nothing is written for a reject."""
    try:
        image, mask = _read_pair(item)
    except BadImageError as err:
        return {"source": item.source_name, "class": item.class_name, "reason": str(err)}
    save_png(image, item.image_out, item.png_level)
    mask_name = ""
    if mask is not None and item.mask_out is not None:
        save_png(mask, item.mask_out, item.png_level)
        mask_name = f"{item.class_name}/{item.mask_out.name}"
    return {
        "file": f"{item.class_name}/{item.image_out.name}",
        "class": item.class_name,
        "sha256": sha256_file(item.image_out),
        "phash": phash_hex(image),
        "bytes": item.image_out.stat().st_size,
        "width": image.size[0],
        "height": image.size[1],
        "source": item.source_name,
        "mask": mask_name,
    }


def _plan(
    classes: list[ClassFolder],
    cfg: DataConfig,
    folder: Path,
    raw: Path,
    masks: Path,
    png_level: int,
) -> list[_IngestItem]:
    items: list[_IngestItem] = []
    seen: dict[str, Path] = {}
    for entry in classes:
        (raw / entry.name).mkdir(exist_ok=True)  # two folders may alias one class
        if entry.masks is not None:
            (masks / entry.name).mkdir(exist_ok=True)
        for path in sorted_files(entry.images, cfg.extensions):
            out_name = f"{entry.name}/{path.stem}.png"
            if out_name in seen:
                raise SourceError(
                    f"{path} and {seen[out_name]} would both become {out_name}; rename one of them."
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
                    image_out=raw / out_name,
                    mask_out=masks / out_name if has_mask else None,
                    min_side=cfg.min_side,
                    png_level=png_level,
                )
            )
    return items


def _check_rejects(rejected: pd.DataFrame, on_bad_image: str) -> None:
    if on_bad_image == "fail" and len(rejected):
        first = rejected.iloc[0]
        raise BadImageError(
            f"{len(rejected)} unusable image(s), first: {first['reason']}. Fix or remove them, "
            "or set data.on_bad_image: skip to leave them out (listed in data/rejected.csv)."
        )


def ingest(
    folder: Path,
    cfg: DataConfig,
    raw: Path,
    masks: Path,
    workers: int | None = None,
    png_level: int = RAW_PNG_LEVEL,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode, convert and write every image (and mask) of `folder`, as PNGs of zlib level
    `png_level`.

    Returns the manifest and the rejected files (source, class, reason); with
    `data.on_bad_image: fail`, any rejected file is an error instead. The manifest's `source`
    is each image's path below the dataset root (what a metadata CSV names it by).
    """
    classes = detect_layout(folder, cfg.extensions, dict(cfg.class_aliases))
    items = _plan(classes, cfg, dataset_root(folder, cfg.extensions), raw, masks, png_level)
    results = ordered_map(_ingest_one, items, workers, desc="download: checking images")
    rejected = pd.DataFrame([r for r in results if "reason" in r], columns=REJECTED_COLUMNS)
    _check_rejects(rejected, cfg.on_bad_image)
    rows = [r for r in results if "reason" not in r]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), rejected


METADATA_KEY = "file"  # the metadata CSV's column naming each image's path in the source


def read_metadata(folder: Path, cfg: DataConfig) -> pd.DataFrame | None:
    """The source's metadata CSV (`data.metadata`, at the dataset root), or None without one."""
    if not cfg.metadata:
        return None
    path = dataset_root(folder, cfg.extensions) / cfg.metadata
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if METADATA_KEY not in frame.columns:
        raise SourceError(
            f"{path} (data.metadata): no {METADATA_KEY!r} column naming each image's path in "
            f"the source (e.g. COVID/images/x.png); its columns are {list(frame.columns)}."
        )
    if frame[METADATA_KEY].duplicated().any():
        twice = frame.loc[frame[METADATA_KEY].duplicated(), METADATA_KEY].iloc[0]
        raise SourceError(f"{path} (data.metadata): {twice} is listed more than once.")
    for row, name in enumerate(frame[METADATA_KEY], start=2):
        if _outside(name):
            raise SourceError(
                f"{path} (data.metadata), row {row}: {name!r} is not a path inside the source "
                f"folder; `{METADATA_KEY}` names each image relative to the folder holding "
                f"{path.name} (e.g. COVID/images/x.png), without '..' or a leading '/'."
            )
    return frame


def _outside(name: str) -> bool:
    """Whether a metadata path is absolute or climbs out of the source folder."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return posix.is_absolute() or bool(windows.drive) or ".." in windows.parts


def unmatched_rows(
    metadata: pd.DataFrame | None, manifest: pd.DataFrame, rejected: pd.DataFrame
) -> list[str]:
    """Metadata paths that name no image of the source (rejected images excepted)."""
    if metadata is None:
        return []
    known = set(manifest["source"]) | set(rejected.get("source", pd.Series(dtype=str)))
    return [name for name in metadata[METADATA_KEY] if name not in known]


def metadata_frame(manifest: pd.DataFrame, metadata: pd.DataFrame | None) -> pd.DataFrame:
    """data/metadata.csv: each ingested image (`file`, as in the manifest) with the source
    metadata of its row (the source's own `file` renamed `source_file`); blank where none."""
    if metadata is None:
        return pd.DataFrame({"file": manifest["file"]})
    rows = metadata.set_index(METADATA_KEY).reindex(manifest["source"])
    frame = rows.reset_index(names="source_file").fillna("")
    frame.loc[~manifest["source"].isin(metadata[METADATA_KEY]).to_numpy(), "source_file"] = ""
    frame.insert(0, "file", manifest["file"].to_numpy())
    return frame


def fetch(
    cfg: DataConfig,
    root: Path,
    raw: Path,
    masks: Path,
    manifest: Path,
    rejected_csv: Path,
    metadata_csv: Path,
) -> dict:
    """Run the download stage; return its summary metrics."""
    kind, opener = source_kind(cfg.source)
    with opener(cfg, root) as folder, atomic_dir(raw) as raw_tmp, atomic_dir(masks) as masks_tmp:
        metadata = read_metadata(folder, cfg)  # checked before any image is decoded
        frame, rejected = ingest(folder, cfg, raw_tmp, masks_tmp)
        meta = metadata_frame(frame, metadata)
        unmatched = unmatched_rows(metadata, frame, rejected)
        write_csv(manifest, frame)  # paths relative to the raw and masks folders
        write_csv(rejected_csv, rejected)
        write_csv(metadata_csv, meta)
    per_class = frame.groupby("class").size()
    with_mask = frame[frame["mask"] != ""].groupby("class").size()
    return {
        "source_kind": kind,
        "images": len(frame),
        "rejected": len(rejected),
        "classes": {name: int(per_class[name]) for name in per_class.index},
        "masks": {name: int(with_mask.get(name, 0)) for name in per_class.index},
        "metadata": {
            "file": cfg.metadata if metadata is not None else "",
            "columns": [c for c in meta.columns if c not in ("file", "source_file")],
            "images_with_metadata": int(
                (meta.get("source_file", pd.Series(dtype=str)) != "").sum()
            ),
            "rows_naming_no_image": len(unmatched),
        },
        "warnings": [
            f"data.metadata: {len(unmatched)} rows name no image of the source (e.g. "
            f"{', '.join(unmatched[:3])}); their metadata is not used. Paths are relative to "
            "the folder holding the CSV, as the images are laid out there."
        ]
        if unmatched
        else [],
    }

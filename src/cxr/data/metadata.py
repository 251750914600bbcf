"""The source's per-image metadata (data/metadata.csv: patient, source, age, sex, view, ...)
looked up for the images of a split, for subgroup results, the source-only baseline and the
shortcut audit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.core import layout
from cxr.core.errors import ConfigError

# Written by the download stage beside the metadata columns; never a subgroup or feature.
BOOKKEEPING = ("file", "source_file")


def read_metadata(path: Path) -> pd.DataFrame:
    """data/metadata.csv indexed by `<Class>/<name>` (every value a string, "" where the
    source gives none); an empty frame when the file is absent or has no rows."""
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(index=pd.Index([], name="file"))
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    if "file" not in frame.columns:
        return pd.DataFrame(index=pd.Index([], name="file"))
    return frame.drop_duplicates("file").set_index("file")


def image_key(path: Path | str) -> str:
    """`<Class>/<name>`: how metadata.csv names an image of any split folder."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def metadata_for(files: Sequence[Path | str], metadata: pd.DataFrame) -> pd.DataFrame:
    """One row per file, in order, with the metadata columns ("" where an image has none)."""
    columns = [c for c in metadata.columns if c not in BOOKKEEPING]
    keys = [image_key(f) for f in files]
    rows = metadata.reindex(keys)[columns] if columns else pd.DataFrame(index=keys)
    return rows.fillna("").reset_index(drop=True)


def patient_groups(metadata: pd.DataFrame, column: str) -> np.ndarray:
    """Each row's patient, `<source>/<value of column>` (a patient id is unique only within its
    source), or the image alone (`image <row>`) where it names none or `column` is "" or
    absent: what a patient-grouped fold or a patient-level bootstrap keeps together."""
    own = pd.Series([f"image {i}" for i in range(len(metadata))], index=metadata.index)
    if not column or column not in metadata.columns:
        return own.to_numpy()
    source = metadata["source"] if "source" in metadata.columns else ""
    named = source + "/" + metadata[column]
    return named.where(metadata[column] != "", own).to_numpy()


def read_origins(path: Path) -> dict[str, str]:
    """The augment stage's manifest as `<Class>/<name>` -> the original image it came from
    (an original maps to itself); empty when the file is absent."""
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    return dict(zip(frame["file"], frame["source"], strict=True))


def balance_groups(
    files: Sequence[Path | str],
    metadata: pd.DataFrame,
    column: str,
    origins: Mapping[str, str],
) -> list[str]:
    """Each training image's value of `column` (train.balance_by), looked up under the original
    an augmented copy was made from; "" where the source names none."""
    if column not in metadata.columns or column in BOOKKEEPING:
        named = ", ".join(c for c in metadata.columns if c not in BOOKKEEPING) or "none"
        raise ConfigError(
            f"train.balance_by: {column!r} is not a column of {layout.METADATA} (columns: "
            f"{named}); name one of them, or set train.balance_by: \"\""
        )
    originals = [origins.get(key, key) for key in map(image_key, files)]
    return metadata_for(originals, metadata)[column].tolist()

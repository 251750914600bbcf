"""benchmarks/ingest_throughput.py ingests real X-rays at both PNG levels and finds the same
pixels; its pixel check tells a changed pixel apart."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxr.data.sources import RAW_PNG_LEVEL
from tests.helpers.benchmarks import load_benchmark
from tests.helpers.sources import linked_subset

ingest_throughput = load_benchmark("ingest_throughput")


def first_of_each_class(manifest: pd.DataFrame, count: int = 3) -> pd.Series:
    """The first `count` images with a lung mask of every class."""
    masked = manifest[manifest["mask"] != ""]
    chosen = masked.index[masked.groupby("class").cumcount() < count]
    return pd.Series(manifest.index.isin(chosen), index=manifest.index)


def test_both_levels_give_the_same_pixels_and_level_1_larger_files(
    real_data: Path, tmp_path: Path, capsys
) -> None:
    few = linked_subset(real_data, tmp_path / "few", first_of_each_class)  # 9 X-rays, 9 masks
    result = ingest_throughput.main(["--data", str(few), "--repeats", "1", "--workers", "1"])

    assert result["images"] == 9
    assert result["same_pixels"] is True
    # zlib's level 1 never compresses better than its level 6 on these images
    assert result["bytes"][RAW_PNG_LEVEL] > result["bytes"][ingest_throughput.BEFORE]
    out = capsys.readouterr().out
    assert re.search(r"^speed-up: [\d.]+x; files [\d.]+x the size$", out, re.M)
    assert "same pixels at both levels: yes" in out


def test_same_pixels_finds_one_changed_pixel(tmp_path: Path) -> None:
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for tree, value in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / tree / "Normal").mkdir(parents=True)
        changed = pixels.copy()
        changed[3, 3] += value
        Image.fromarray(changed).save(tmp_path / tree / "Normal" / "x.png")

    assert ingest_throughput.same_pixels(tmp_path / "a", tmp_path / "b")
    assert not ingest_throughput.same_pixels(tmp_path / "a", tmp_path / "c")

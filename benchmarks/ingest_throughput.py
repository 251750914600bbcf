"""The download stage's ingest (decode, check, perceptual hash, write PNG) of a real folder at
zlib level 6, PIL's default and the level data/raw was written with before, against
`cxr.data.sources.RAW_PNG_LEVEL`, alternating, in this one run. Prints per level the median
seconds, images per second and bytes written, the ratios, and whether every image decodes to
the same pixels at both levels (PNG is lossless; the stage's manifest records the written
files' sha256, which the level changes).

    python benchmarks/ingest_throughput.py --data ../shared/data/cxrmix [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.core.config import DataConfig, load_params
from cxr.data.sources import RAW_PNG_LEVEL, ingest

PROJECT = Path(__file__).resolve().parents[1]
BEFORE = 6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="a folder in one of data.source's layouts"
    )
    parser.add_argument("--repeats", type=int, default=3, help="ingests per level, alternating")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    return parser.parse_args(argv)


def ingest_once(
    data: Path, cfg: DataConfig, out: Path, level: int, workers: int | None
) -> tuple[float, int, int]:
    """Seconds to ingest `data` into `out` at `level`, images ingested, bytes of PNG written."""
    raw, masks = out / "raw", out / "masks"
    raw.mkdir(parents=True)
    masks.mkdir()
    start = time.perf_counter()
    manifest, _ = ingest(data, cfg, raw, masks, workers, png_level=level)
    seconds = time.perf_counter() - start
    return seconds, len(manifest), sum(p.stat().st_size for p in out.rglob("*.png"))


def same_pixels(a: Path, b: Path) -> bool:
    """Whether the two trees hold the same PNG names with the same decoded pixels."""
    names = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    if names != sorted(p.relative_to(b) for p in b.rglob("*.png")):
        return False
    return all(
        np.array_equal(np.asarray(Image.open(a / n)), np.asarray(Image.open(b / n))) for n in names
    )


def compare(data: Path, repeats: int, workers: int | None) -> dict:
    """Per level (BEFORE, RAW_PNG_LEVEL): median seconds and bytes written; the images, and
    whether they decode to the same pixels at both levels."""
    levels = (BEFORE, RAW_PNG_LEVEL)
    seconds: dict[int, list[float]] = {level: [] for level in levels}
    sizes: dict[int, int] = {}
    cfg = load_params(PROJECT / "params.yaml").data
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):  # alternating, so a drift in speed hits both levels
            for level in levels if repeat % 2 == 0 else levels[::-1]:
                out = Path(tmp) / f"{level}-{repeat}"
                took, images, sizes[level] = ingest_once(data, cfg, out, level, workers)
                seconds[level].append(took)
        same = same_pixels(Path(tmp) / f"{BEFORE}-0", Path(tmp) / f"{RAW_PNG_LEVEL}-0")
    return {
        "images": images,
        "seconds": {level: statistics.median(seconds[level]) for level in levels},
        "bytes": sizes,
        "same_pixels": same,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = compare(args.data, args.repeats, args.workers)
    images = result["images"]
    for level in (BEFORE, RAW_PNG_LEVEL):
        took, size = result["seconds"][level], result["bytes"][level]
        print(
            f"level {level}: {took:.2f} s median of {args.repeats}, {images / took:.1f} images/s, "
            f"{size / 2**20:.1f} MiB for {images} images"
        )
    before, now = (result["seconds"][k] for k in (BEFORE, RAW_PNG_LEVEL))
    grown = result["bytes"][RAW_PNG_LEVEL] / result["bytes"][BEFORE]
    print(f"speed-up: {before / now:.2f}x; files {grown:.2f}x the size")
    print("same pixels at both levels:", "yes" if result["same_pixels"] else "NO")
    return result


if __name__ == "__main__":
    main()

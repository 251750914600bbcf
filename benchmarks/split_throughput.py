"""Split throughput: our split stage (split-folders + exact and near-duplicate groups) vs plain
`splitfolders.ratio` on the same ingested images, plus the download stage's ingestion rate
(decode, validate, convert, sha256, perceptual hash). Prints rates and ratios from this run.

    python benchmarks/split_throughput.py [--images 3000] [--size 64]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import splitfolders

from cxr.core.config import DataConfig, SplitConfig, SyntheticConfig
from cxr.data.sources import fetch
from cxr.data.split import split_dataset


def timed(fn, out: Path, *args, repeats: int = 3, **kwargs) -> float:
    """Best of `repeats` runs (the first also warms the page cache); output removed between."""
    best = float("inf")
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-split-") as scratch:
        root = Path(scratch)
        data = root / "data"
        data.mkdir()
        cfg = DataConfig(synthetic=SyntheticConfig(n_images=args.images, image_size=args.size))
        start = time.perf_counter()
        fetch(cfg, root, data / "raw", data / "masks", data / "m.csv", data / "r.csv")
        ingest = time.perf_counter() - start
        plain = timed(
            splitfolders.ratio,
            root / "plain",
            str(data / "raw"),
            output=str(root / "plain"),
            seed=1,
            ratio=(0.7, 0.15, 0.15),
        )
        exact = timed(
            split_dataset,
            root / "exact",
            data / "raw",
            data / "m.csv",
            root / "exact",
            SplitConfig(near_duplicate_distance=None),
        )
        ours = timed(
            split_dataset, root / "ours", data / "raw", data / "m.csv", root / "ours", SplitConfig()
        )
    n = args.images
    print(f"{n} synthetic images of {args.size} px")
    print(f"download stage (generate + ingest): {ingest:7.2f} s  {n / ingest:8.1f} img/s")
    print(f"plain splitfolders.ratio:           {plain:7.2f} s  {n / plain:8.1f} img/s")
    print(
        f"split, exact groups only:           {exact:7.2f} s  {n / exact:8.1f} img/s  "
        f"ratio to plain {plain / exact:.2f}x"
    )
    print(
        f"split, exact + near groups:         {ours:7.2f} s  {n / ours:8.1f} img/s  "
        f"ratio to plain {plain / ours:.2f}x"
    )


if __name__ == "__main__":
    main()

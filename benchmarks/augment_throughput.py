"""Augment throughput: our deterministic, process-parallel augment vs Augmentor's own
multi-threaded `Pipeline.sample`, on the same source images and the same operations
(those in params.yaml). Prints both rates and their ratio, measured in this one run.

    python benchmarks/augment_throughput.py [--sources 40] [--outputs 400] [--size 256]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from cxr import synthetic
from cxr.augment import augment_train, build_pipeline
from cxr.config import AugmentConfig, load_params
from cxr.parallel import default_workers

PROJECT = Path(__file__).resolve().parents[1]


def make_train(root: Path, sources: int, outputs: int, size: int) -> Path:
    """train/Small with `sources` images and train/Big with `sources + outputs`, so that
    oversampling Small to the majority generates exactly `outputs` images."""
    train = root / "train"
    for name, count in (("Small", sources), ("Big", sources + outputs)):
        (train / name).mkdir(parents=True)
        for i in range(count):
            image, _ = synthetic.draw_phantom("COVID", size, seed=i)
            image.save(train / name / f"{name}-{i:05d}.png")
    return train


def time_ours(train: Path, out: Path, cfg: AugmentConfig, workers: int) -> float:
    start = time.perf_counter()
    augment_train(train, out, cfg, workers=workers)
    return time.perf_counter() - start


def time_augmentor(source: Path, out: Path, cfg: AugmentConfig, outputs: int) -> float:
    pipeline = build_pipeline(cfg.operations)
    pipeline.add_further_directory(str(source), str(out))
    start = time.perf_counter()
    pipeline.sample(outputs, multi_threaded=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=40)
    parser.add_argument("--outputs", type=int, default=400)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    cfg = load_params(PROJECT / "params.yaml").augment
    with tempfile.TemporaryDirectory(prefix="cxr-bench-augment-") as scratch:
        root = Path(scratch)
        train = make_train(root, args.sources, args.outputs, args.size)
        theirs = time_augmentor(train / "Small", root / "augmentor-out", cfg, args.outputs)
        made = len(list((root / "augmentor-out").iterdir()))
        ours = time_ours(train, root / "ours", cfg, args.workers)
        again = time_ours(train, root / "ours2", cfg, args.workers)
        same = all(
            a.read_bytes() == b.read_bytes()
            for a, b in zip(
                sorted((root / "ours").rglob("*__aug*.png")),
                sorted((root / "ours2").rglob("*__aug*.png")),
                strict=True,
            )
        )
        shutil.rmtree(root / "ours2")
    print(
        f"{args.outputs} outputs from {args.sources} images of {args.size} px, ops: "
        f"{', '.join(op.name for op in cfg.operations)}"
    )
    print(
        f"Augmentor Pipeline.sample (multi-threaded): {theirs:7.2f} s  "
        f"{made / theirs:7.1f} img/s  ({made} files)"
    )
    print(
        f"cxr augment ({args.workers} processes):       {ours:7.2f} s  "
        f"{args.outputs / ours:7.1f} img/s  (second run {again:.2f} s, identical: {same})"
    )
    print(
        f"speed ratio ours / Augmentor: {theirs / ours:.2f}x (min of runs: "
        f"{theirs / min(ours, again):.2f}x)"
    )


if __name__ == "__main__":
    main()

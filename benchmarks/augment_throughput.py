"""Augment throughput: our deterministic, process-parallel augment vs Augmentor's own
multi-threaded `Pipeline.sample`, on the same source images and the same operations
(those in params.yaml). Prints both rates and their ratio, measured in this one run.

    python benchmarks/augment_throughput.py [--sources 40] [--outputs 400] [--size 256]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from cxr.core.config import AugmentConfig, load_params
from cxr.core.parallel import default_workers
from cxr.data import synthetic
from cxr.data.augment import augment_train, build_pipeline

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


def augmentor_threads() -> int:
    """What `Pipeline.sample(multi_threaded=True)` uses: a ThreadPoolExecutor's default."""
    return min(32, (os.cpu_count() or 1) + 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=40)
    parser.add_argument("--outputs", type=int, default=400)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs; best counts")
    args = parser.parse_args()
    cfg = load_params(PROJECT / "params.yaml").augment
    # Ours with the stage's default (one process per core) and with as many processes as
    # Augmentor has threads (equal parallelism, which matters on a shared, loaded machine).
    worker_counts = sorted({default_workers(), augmentor_threads()})
    theirs: list[float] = []
    ours: dict[int, list[float]] = {n: [] for n in worker_counts}
    digests = set()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-augment-") as scratch:
        root = Path(scratch)
        train = make_train(root, args.sources, args.outputs, args.size)
        for _ in range(args.repeats):  # alternate, so load changes hit both alike
            theirs.append(time_augmentor(train / "Small", root / "augmentor", cfg, args.outputs))
            made = len(list((root / "augmentor").iterdir()))
            shutil.rmtree(root / "augmentor")
            for workers in worker_counts:
                ours[workers].append(time_ours(train, root / "ours", cfg, workers))
                outputs = sorted((root / "ours").rglob("*__aug*.png"))
                blob = b"".join(p.read_bytes() for p in outputs)
                digests.add(hashlib.sha256(blob).hexdigest())
    runs = lambda times: ", ".join(f"{t:.2f}" for t in times)  # noqa: E731
    print(
        f"{args.outputs} outputs from {args.sources} images of {args.size} px, ops: "
        f"{', '.join(op.name for op in cfg.operations)}; best of {args.repeats} alternating runs"
    )
    print(
        f"Augmentor Pipeline.sample ({augmentor_threads()} threads): {min(theirs):6.2f} s "
        f"{made / min(theirs):7.1f} img/s  ({made} files; runs {runs(theirs)})"
    )
    for workers, times in ours.items():
        print(
            f"cxr augment ({workers} processes):             {min(times):6.2f} s "
            f"{args.outputs / min(times):7.1f} img/s  (runs {runs(times)}); "
            f"ratio ours / Augmentor {min(theirs) / min(times):.2f}x"
        )
    print(f"outputs identical across all runs and worker counts: {len(digests) == 1}")


if __name__ == "__main__":
    main()

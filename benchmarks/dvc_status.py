"""`dvc status` on an unchanged 21,000-image tree: a git+DVC repo in a temp folder whose
data/raw holds synthetic X-rays (small images), tracked with `dvc add`. Prints the time of
`dvc add` (hashing everything once) and of repeated `dvc status` runs, and their ratio.

    python benchmarks/dvc_status.py [--images 21000] [--size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cxr.core.parallel import ordered_map
from cxr.data.synthetic import class_counts, draw_phantom


def _write(job: tuple[Path, str, int, int]) -> None:
    folder, name, size, seed = job
    image, _ = draw_phantom(name, size, seed)
    image.save(folder / name / f"{name}-{seed:05d}.png")


def make_tree(folder: Path, images: int, size: int) -> None:
    jobs = []
    for name, count in class_counts(images).items():
        (folder / name).mkdir(parents=True)
        jobs += [(folder, name, size, seed) for seed in range(count)]
    ordered_map(_write, jobs)


def dvc(*args: str, cwd: Path) -> float:
    bin_dir = Path(sys.executable).parent
    start = time.perf_counter()
    subprocess.run([str(bin_dir / "dvc"), *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=21000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-dvc-") as scratch:
        repo = Path(scratch)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        dvc("init", "-q", cwd=repo)
        dvc("config", "core.analytics", "false", cwd=repo)
        start = time.perf_counter()
        make_tree(repo / "data" / "raw", args.images, args.size)
        made = time.perf_counter() - start
        added = dvc("add", "data/raw", cwd=repo)
        times = [dvc("status", cwd=repo) for _ in range(args.repeats)]
    best = min(times)
    print(f"{args.images} images of {args.size} px (generated in {made:.1f} s)")
    print(f"dvc add data/raw (hash everything): {added:7.2f} s")
    print(f"dvc status, unchanged, {args.repeats} runs: " + ", ".join(f"{t:.2f} s" for t in times))
    print(f"ratio dvc add / best dvc status: {added / best:.1f}x")


if __name__ == "__main__":
    main()

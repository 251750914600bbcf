"""What `train.reproducible` costs, and what it buys: the train stage run as users run it, in
one temporary project on the default (synthetic) data, with the mode off and on, alternating.

Prints per variant the median training throughput (images/s of the epochs' training passes,
as the stage's epoch lines report it), the median wall time of the whole stage (start-up and
the mode's re-execution included), their ratios to "off" at the same thread count, and the
model's sha256; then whether the model came out the same on emulated other CPUs (instruction
sets capped as an older or an AVX2-only CPU would cap them).

    python benchmarks/reproducible_mode.py                      # params.yaml's train section
    python benchmarks/reproducible_mode.py --epochs 1 --repeats 3 --threads 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
EMULATED = {
    "this CPU": {},
    "AVX2 CPU (no AVX-512)": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (alternating)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    return parser.parse_args()


def prepare(root: Path) -> None:
    """A copy of the project's files with the data stages run (synthetic default data)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        if name.startswith(("src/", "stages/", "params.yaml", "dvc.yaml")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, root / name)
    for stage in ("params", "download", "split", "augment"):
        subprocess.run(
            [sys.executable, f"stages/{stage}.py"],
            cwd=root,
            env=env(root),
            check=True,
            capture_output=True,
        )


def env(root: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "RANK", "WORLD_SIZE")}
    return {
        **clean,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "CXR_CACHE_DIR": str(root / ".pixels"),
        **extra,
    }


def train(root: Path, reproducible: bool, threads: int, epochs: int | None, **extra: str) -> dict:
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train"].update({"reproducible": reproducible, "threads": threads})
    if epochs is not None:
        params["train"]["epochs"] = epochs
        params["train"]["warmup_epochs"] = min(params["train"]["warmup_epochs"], epochs)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "stages/train.py"],
        cwd=root,
        env=env(root, **extra),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"train stage failed:\n{done.stdout}\n{done.stderr}")
    speeds = [float(s) for s in re.findall(r"\| (\d+) images/s", done.stdout)]
    model = hashlib.sha256((root / "models/model.pt").read_bytes()).hexdigest()
    return {"speed": statistics.median(speeds), "wall": wall, "model": model}


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        print("preparing the default data (params, download, split, augment stages) ...")
        prepare(root)
        variants = [(mode, t) for t in args.threads for mode in (False, True)]
        runs: dict[tuple[bool, int], list[dict]] = {v: [] for v in variants}
        for repeat in range(args.repeats):
            for reproducible, threads in variants:
                runs[(reproducible, threads)].append(
                    train(root, reproducible, threads, args.epochs)
                )
                print(f"  round {repeat + 1}: reproducible={reproducible} threads={threads} done")
        print(f"\n{'variant':<28}{'images/s':>10}{'ratio':>8}{'stage s':>9}{'ratio':>8}  model")
        for reproducible, threads in variants:
            speed = statistics.median(r["speed"] for r in runs[(reproducible, threads)])
            wall = statistics.median(r["wall"] for r in runs[(reproducible, threads)])
            off_speed = statistics.median(r["speed"] for r in runs[(False, threads)])
            off_wall = statistics.median(r["wall"] for r in runs[(False, threads)])
            models = sorted({r["model"][:16] for r in runs[(reproducible, threads)]})
            name = f"{'on' if reproducible else 'off'}, {threads} thread(s)"
            print(
                f"{name:<28}{speed:>10.1f}{speed / off_speed:>8.2f}{wall:>9.1f}"
                f"{wall / off_wall:>8.2f}  {', '.join(models)}"
            )
        threads = args.threads[0]
        here = runs[(True, threads)][0]["model"]
        print(f"\nreproducible, {threads} thread(s): this CPU's model {here[:16]}")
        for name, caps in EMULATED.items():
            off = train(root, False, threads, args.epochs, **caps)["model"]
            on = train(root, True, threads, args.epochs, **caps)["model"]
            same = "same" if on == here else "DIFFERENT"
            print(f"  emulated {name:<18} off {off[:16]}  on {on[:16]} ({same} as this CPU's)")


if __name__ == "__main__":
    main()

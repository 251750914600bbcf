"""README's Quickstart from a fresh clone, `pip install -e .` against `pip install --no-compile
-e .`, each followed by the first `dvc repro`, alternating, in this one run.

pip byte-compiles every module of every installed package by default: torch, MLflow and the rest
hold thousands that no stage imports. With `--no-compile`, Python compiles the modules a stage
imports the first time it imports them (and caches them, as pip would have). Prints per mode the
median seconds of the install, of the first `dvc repro` and of both, the .pyc files each left in
the virtual environment, and the ratios.

    python benchmarks/install_compile.py [--rounds 1] [--then "dvc repro"]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
MODES = {"compile": [], "no-compile": ["--no-compile"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=PROJECT, help="the git repo to clone")
    parser.add_argument("--rounds", type=int, default=1, help="installs per mode, alternating")
    parser.add_argument("--then", default="dvc repro", help="what runs after the install")
    return parser.parse_args(argv)


def timed(command: str, cwd: Path) -> float:
    """Seconds `command` took in bash inside `cwd`'s .venv; raises if it failed."""
    # Users' shells write bytecode: without that, --no-compile would recompile every run.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.pop("VIRTUAL_ENV", None)
    start = time.perf_counter()
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f". .venv/bin/activate && {command}"],
        cwd=cwd,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def count_bytecode(venv: Path) -> int:
    """.pyc files under the virtual environment."""
    return sum(1 for _ in venv.rglob("*.pyc"))


def quickstart_once(project: Path, flags: list[str], then: str, tmp: Path) -> dict:
    """A fresh clone, a new venv, the install with `flags`, then `then`: seconds and .pyc files."""
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    subprocess.run(["python3", "-m", "venv", ".venv"], cwd=clone, check=True)
    install = timed(shlex.join(["pip", "install", "-q", *flags, "-e", "."]), clone)
    after_install = count_bytecode(clone / ".venv")
    first = timed(then, clone)
    return {
        "install": install,
        "then": first,
        "total": install + first,
        "pyc_after_install": after_install,
        "pyc_after_then": count_bytecode(clone / ".venv"),
    }


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per mode: the median of each measure over its runs (the total taken run by run)."""
    return {
        mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for mode, rs in runs.items()
    }


def report(summary: dict[str, dict], rounds: int, then: str) -> list[str]:
    """The lines printed: each mode, then the ratios of the default to --no-compile."""
    lines = [
        f"{mode}: install {s['install']:.0f} s, first `{then}` {s['then']:.0f} s, "
        f"total {s['total']:.0f} s (median of {rounds}); .pyc files {s['pyc_after_install']:.0f} "
        f"after the install, {s['pyc_after_then']:.0f} after the run"
        for mode, s in summary.items()
    ]
    before, now = summary["compile"], summary["no-compile"]
    lines.append(
        f"--no-compile: install {before['install'] / now['install']:.2f}x as fast, "
        f"first run {now['then'] / before['then']:.2f}x the time, "
        f"total {before['total'] / now['total']:.2f}x as fast "
        f"({before['total'] - now['total']:+.0f} s saved)"
    )
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):  # alternating, so a drift in speed hits both modes
        for mode in MODES if round_ % 2 == 0 else reversed(MODES):
            with tempfile.TemporaryDirectory() as tmp:
                runs[mode].append(quickstart_once(args.project, MODES[mode], args.then, Path(tmp)))
            print(f"round {round_ + 1}, {mode}: {runs[mode][-1]}", flush=True)
    summary = summarise(runs)
    for line in report(summary, args.rounds, args.then):
        print(line)
    return summary


if __name__ == "__main__":
    main()

"""benchmarks/real_recipes.py (and select_recipe.py, which reads params through it): a run in
`train.reproducible` mode computes with the kernels and threads the pipeline's stages pin, so a
candidate's score is what `dvc exp run` would train on this CPU; outside that mode, with this
CPU's own kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from cxr.training.kernels import KERNEL_PINS
from tests.helpers.benchmarks import ROOT
from tests.helpers.project import project_params
from tests.helpers.train_project import kernels_capability

# A benchmark's start as `python benchmarks/<name>.py` runs it: project_params first, then
# what it computes with and the source it reads.
START = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {folder!r})
from real_recipes import project_params
raw = project_params(Path(sys.argv[1]), threads=1)
import torch
print(json.dumps({{
    "capability": torch.backends.cpu.get_cpu_capability(),
    "pins": {{name: os.environ.get(name) for name in {names!r}}},
    "threads": os.environ.get("OMP_NUM_THREADS"),
    "source": raw["data"]["source"],
}}))
"""


def start_process(tmp_path: Path, reproducible: object) -> subprocess.CompletedProcess:
    params = project_params()
    params["train"]["reproducible"] = reproducible
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in (*KERNEL_PINS, "OMP_NUM_THREADS")}
    code = START.format(folder=str(ROOT / "benchmarks"), names=sorted(KERNEL_PINS))
    return subprocess.run(
        [sys.executable, "-c", code, "data"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def start_benchmark(tmp_path: Path, reproducible: bool) -> dict:
    done = start_process(tmp_path, reproducible)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_reproducible_mode_runs_the_candidates_on_the_stages_pinned_kernels(
    tmp_path: Path,
) -> None:
    started = start_benchmark(tmp_path, reproducible=True)
    # AVX2 on every machine CI may use; on an AVX-512 one it is not what torch picks unpinned
    assert started["capability"] == "AVX2", started
    assert started["pins"] == KERNEL_PINS
    assert started["threads"] == "1"  # the benchmark's --threads, as the stages pin theirs
    assert started["source"] == str((tmp_path / "data").resolve())


def test_without_reproducible_mode_the_cpu_keeps_its_own_kernels(tmp_path: Path) -> None:
    started = start_benchmark(tmp_path, reproducible=False)
    unpinned = {k: v for k, v in os.environ.items() if k not in KERNEL_PINS}
    assert started["capability"] == kernels_capability(unpinned)
    assert started["pins"] == dict.fromkeys(KERNEL_PINS)


def test_a_malformed_reproducible_flag_stops_before_anything_is_pinned(tmp_path: Path) -> None:
    done = start_process(tmp_path, "yes")
    assert done.returncode != 0
    assert "train.reproducible" in done.stderr
    assert done.stdout == ""  # stopped before torch loaded, pinned or not

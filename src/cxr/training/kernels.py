"""Reproducible mode's CPU kernel pins, importable without torch.

PyTorch, oneDNN and MKL read these settings from the environment when they first load, so a
process without them must re-execute itself with them in place. `pin_kernels` does that at the
very start of a stage script, before its imports: re-executing after them would pay for
torch, torchvision and MLflow (about 5 s on two cores) twice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

# What reproducible mode pins, read by each library when it first runs a kernel.
KERNEL_PINS = {
    # PyTorch's vectorised kernels: the AVX2 versions, which every x86-64 CPU since 2013
    # (Intel Haswell, AMD Zen) runs; AVX-512 ones would round differently.
    "ATEN_CPU_CAPABILITY": "avx2",
    # oneDNN (convolutions): at most AVX2 instructions, for the same reason.
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # MKL (matrix products): its conditional-numerical-reproducibility path that every x86 CPU
    # runs (its AVX2 path is honoured on Intel CPUs only).
    "MKL_CBWR": "COMPATIBLE",
    # cuBLAS: a fixed workspace, which deterministic GEMMs on CUDA need.
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}


def pinned_environment(threads: int) -> dict[str, str]:
    """The environment variables reproducible mode sets: kernel pins and thread counts."""
    return {**KERNEL_PINS, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def enter_reproducible_mode(reproducible: bool, threads: int) -> None:
    """In reproducible mode, return only in a process whose environment holds the pins: the
    first call re-executes this process (same interpreter, arguments and pid) with them."""
    if not reproducible:
        return
    wanted = pinned_environment(threads)
    if all(os.environ.get(name) == value for name, value in wanted.items()):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **wanted})


def pin_kernels(path: Path | str = "params.yaml") -> None:
    """`enter_reproducible_mode` for `train.reproducible` and `train.threads` as params.yaml
    holds them, read raw. A file or value that is missing or malformed is left alone here:
    the stage's own `load_params` then names it and the fix."""
    try:
        train = yaml.safe_load(Path(path).read_text())["train"]
        reproducible, threads = train["reproducible"], train["threads"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return
    if isinstance(reproducible, bool) and type(threads) is int and threads >= 1:
        enter_reproducible_mode(reproducible, threads)

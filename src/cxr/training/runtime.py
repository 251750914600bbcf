"""Where and how a model runs: the device, the seeds, the kernels, and the environment's record.

On a CPU the bytes a run produces depend on which kernels compute it: PyTorch's own vectorised
code (per instruction set: plain, AVX2, AVX-512), oneDNN's convolutions (likewise), MKL's
matrix products (per code path) and how many threads split each reduction. `train.reproducible`
pins the instruction sets, MKL's path and the threads (`kernels.pinned_environment`), so that
an AVX-512 CPU computes what an AVX2 CPU of the same kind does; the libraries read these
settings from the environment when they first run a kernel, so `kernels.pin_kernels`
re-executes the stage with them in place (once, before its imports) when they are not. What no
setting pins: oneDNN sizes its convolutions' loop blocks by the CPU's cache sizes, which it
reads from the CPU itself, so CPUs of other kinds (an Intel Xeon and an AMD EPYC, measured)
train different bytes. On a GPU the mode asks for deterministic algorithms instead of cuDNN's
fastest.

`environment_fingerprint` records what decides a run's numbers (library versions, kernels,
threads, deterministic flags, the CPU kind and its caches, the GPU) and the machine it ran on;
its short hash goes into the metrics, so a metrics diff says whether the environment changed.

`keep_freed_memory` is about speed only: it changes where glibc puts large tensors, never a
number computed with them.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.core.config import TrainConfig
from cxr.core.errors import ConfigError
from cxr.training import kernels

# The ATen capability the pin selects, as torch.backends.cpu reports it.
PINNED_CAPABILITY = "AVX2"
VERSIONED = ("torch", "torchvision", "timm", "numpy")
# The vector instruction sets recorded as part of the CPU's kind (/proc/cpuinfo's flags).
VECTOR_SETS = ("sse4_2", "avx", "avx2", "avx512f", "amx_tile")
# mallopt(3) parameters (glibc's malloc.h) and the largest value it takes (a C int).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 2**31 - 1


def enter_reproducible_mode(cfg: TrainConfig) -> None:
    """`kernels.enter_reproducible_mode` for a validated train config: a no-op when the stage
    already pinned its kernels before its imports (`kernels.pin_kernels`)."""
    kernels.enter_reproducible_mode(cfg.reproducible, cfg.threads)


def select_device(requested: str) -> torch.device:
    """`auto` → CUDA, else MPS, else CPU; an explicit device must exist."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available[requested]:
        raise ConfigError(
            f"train.device: {requested} is not available on this machine; use auto or cpu"
        )
    return torch.device(requested)


def configure(cfg: TrainConfig, device: torch.device) -> None:
    """Threads, the allocator (`keep_freed_memory`), deterministic algorithms and seeds for a
    run on `device`. CPU runs always use deterministic algorithms (they cost nothing there);
    GPU runs only in reproducible mode, else they take cuDNN's fastest kernels."""
    torch.set_num_threads(cfg.threads)
    keep_freed_memory()
    deterministic = device.type == "cpu" or cfg.reproducible
    # On CUDA some ops (adaptive pooling's backward, among others) have no deterministic
    # kernel: warn there rather than stop the run.
    torch.use_deterministic_algorithms(deterministic, warn_only=device.type != "cpu")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if cfg.reproducible and device.type == "cpu":
        _check_pins_took_effect()
    seed_everything(cfg.seed)


def keep_freed_memory() -> bool:
    """On glibc, serve tensors up to 2 GiB from the heap and keep freed memory for reuse;
    returns whether it applied (False on other C libraries, which are left as they are).

    By default glibc maps every block over its mmap threshold (at most 32 MiB) afresh and
    unmaps it when freed, so each batch of a network at 224-288 px faults its activations in
    again, page by page: measured on efficientnet_lite0 at 288 px on two cores, inference took
    1.77 times and training 1.39 times as long so (benchmarks/freed_memory.py). PyTorch aligns its
    tensors itself, so the numbers computed are the same bytes; the price is that a process
    keeps memory it has freed instead of returning it to the system."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
    except (ValueError, OSError):  # not a GNU system: no such name
        return False
    libc = ctypes.CDLL(None)
    applied = [libc.mallopt(option, KEEP_BYTES) for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)]
    return all(applied)


def _check_pins_took_effect() -> None:
    in_use = torch.backends.cpu.get_cpu_capability()
    if in_use != PINNED_CAPABILITY:
        print(
            f"warning: train.reproducible: this CPU runs PyTorch's {in_use} kernels, not "
            f"{PINNED_CAPABILITY}; its results will differ from those of AVX2 machines",
            file=sys.stderr,
        )


def seed_everything(seed: int) -> None:
    """Seed the RNGs training touches."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo (`model name`, `flags`, ...); empty where
    there is no such file."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines():
        if not line.strip():  # the first CPU's block ends at the first blank line
            break
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def _cpu_model(cpuinfo: dict[str, str]) -> str:
    return cpuinfo.get("model name") or platform.processor() or platform.machine()


def _cpu_instruction_sets(cpuinfo: dict[str, str]) -> list[str]:
    """The vector instruction sets this CPU has (from /proc/cpuinfo, where there is one)."""
    flags = cpuinfo.get("flags", "").split()
    return [name for name in VECTOR_SETS if name in flags]


def _cpu_caches() -> dict[str, str]:
    """The size of each data cache level as Linux reports it (`L1d`, `L2`, `L3`: `32K`, ...),
    what oneDNN sizes its loop blocks by; empty where there is no such record."""
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind, level = (index / "type").read_text().strip(), (index / "level").read_text()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind in ("Data", "Unified"):
            caches[f"L{level.strip()}{'d' if kind == 'Data' else ''}"] = size
    return caches


def machine_kind() -> dict[str, Any]:
    """The CPU as far as it decides a reproducible run's bytes: its model name, vector
    instruction sets and data cache sizes (`reports/environment.json`'s `machine` holds them)."""
    cpuinfo = _cpuinfo()
    return {
        "cpu": _cpu_model(cpuinfo),
        "instruction_sets": _cpu_instruction_sets(cpuinfo),
        "caches": _cpu_caches(),
    }


def environment_fingerprint(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """What decides this run's numbers (`decides`) and the machine it ran on (`machine`),
    with `hash`, a short hash of `decides`. On a CPU the CPU's kind and cache sizes decide
    (oneDNN blocks its loops by them), and without reproducible mode its instruction sets
    too."""
    decides: dict[str, Any] = {
        "reproducible": cfg.reproducible,
        "versions": {name: _version(name) for name in VERSIONED},
        "device": device.type,
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if device.type == "cpu":
        decides["kernels"] = {
            "aten": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "all"),
            "mkl_cbwr": os.environ.get("MKL_CBWR", "off"),
        }
    if device.type == "cuda":
        decides["cuda"] = {
            "gpu": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        }
    machine = {
        **machine_kind(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cpu":
        decides["cpu"] = {"model": machine["cpu"], "caches": machine["caches"]}
        if not cfg.reproducible:
            decides["cpu"]["instruction_sets"] = machine["instruction_sets"]
    digest = hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:12]
    return {"hash": digest, "decides": decides, "machine": machine}

"""Reproducible mode, checked as another machine would see it: "another CPU" is emulated by
capping the instruction sets the three kernel libraries may use (PyTorch's ATen, oneDNN, MKL),
which changes the numbers they compute; in reproducible mode the train stage pins its kernels
before any of them runs, so the model comes out byte for byte the same. The environment that
decided the numbers is in metrics/train.json (its hash), reports/environment.json and MLflow.
That a forced rerun trains anew and gives the same bytes is checked end to end
(tests/pipeline/test_pipeline.py).

What the emulation cannot show, a CPU of another kind, differs: oneDNN blocks its convolutions
by the CPU's cache sizes, and an Intel Xeon and an AMD EPYC train other bytes
(docs/reproducibility.md); tests/pipeline/test_committed_model.py retrains the model measured on
this machine's kind."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.training.runtime import VECTOR_SETS, machine_kind
from tests.helpers.project import committed
from tests.helpers.train_project import kernels_capability, make_project, run_train, stage_env

# Two machines: this one as it is (AVX-512 where its CPU has it) and an AVX2 CPU without
# AVX-512, emulated by capping what each kernel library may use. CI may run on either kind of
# CPU; on one without AVX-512 both are the same machine. (An older CPU without AVX2 cannot run
# the pinned kernels at all: the stage warns, and docs/reproducibility.md says so.)
THIS_CPU: dict[str, str] = {}
AVX2_CPU = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
# A pre-AVX2 CPU (SSE4): every AVX2 machine can run it, so the caps' effect shows on any CPU.
SSE4_CPU = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
}

# A convolution (oneDNN), a matrix product (MKL) and a long reduction (ATen), as training runs
# them; their results' hash.
KERNELS = """
import hashlib, torch
torch.manual_seed(0)
x = torch.randn(8, 16, 24, 24)
conv = torch.nn.Conv2d(16, 32, 3)
out = [conv(x), torch.randn(300, 500) @ torch.randn(500, 70), torch.randn(1_000_003).sum()]
print(hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in out)).hexdigest())
"""


def kernels_hash(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", KERNELS], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_capping_the_instruction_sets_changes_the_numbers_on_any_avx2_cpu(tmp_path: Path) -> None:
    """The emulation has teeth on every machine CI may use: the AVX2 and SSE4 caps (both runnable
    on any AVX2 CPU) compute other numbers in all three libraries' kernels."""
    base = stage_env(tmp_path)
    assert kernels_hash({**base, **AVX2_CPU}) != kernels_hash({**base, **SSE4_CPU})


def test_this_cpu_differs_from_the_avx2_cap_exactly_when_it_has_avx512(tmp_path: Path) -> None:
    """With AVX-512 the native kernels are another machine's than the AVX2-capped ones (the
    reproducible-mode test below then compares two machines); without it the cap changes
    nothing, and that test shows same-machine determinism only: the cross-machine evidence is
    then the committed dvc.lock's model hash, retrained here (tests/pipeline/test_pipeline.py)."""
    base = stage_env(tmp_path)
    has_avx512 = kernels_capability(base) == "AVX512"
    differ = kernels_hash({**base, **THIS_CPU}) != kernels_hash({**base, **AVX2_CPU})
    assert differ == has_avx512, f"AVX-512: {has_avx512}, native and AVX2 kernels differ: {differ}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.e2e  # runs a stage for real (README: the slow part)
def test_reproducible_mode_trains_the_same_model_on_both_emulated_cpus(tmp_path: Path) -> None:
    results = {}
    for name, cpu in (("this", THIS_CPU), ("avx2", AVX2_CPU)):
        root = make_project(tmp_path / name, per_class=6, epochs=1, reproducible=True)
        run_train(root, **cpu)
        metrics = json.loads((root / "metrics/train.json").read_text())
        environment = json.loads((root / "reports/environment.json").read_text())
        with sqlite3.connect(root / "mlflow.db") as db:
            tags = dict(db.execute("select key, value from tags").fetchall())
        results[name] = (sha256(root / "models/model.pt"), metrics)
        assert metrics["environment"] == environment["hash"] == tags["cxr.environment"]
        assert environment["decides"]["kernels"]["aten"] == "AVX2"  # pinned, not the cap
        assert environment["decides"]["threads"] == 2
        assert "AVX2" in tags["cxr.environment.kernels"]
    assert results["this"] == results["avx2"]


# Batch after batch of activations, as inference allocates and frees them: the page faults of
# touching each, with or without the stages' runtime settings.
BATCH_FAULTS = """
import resource, sys, torch
from cxr.core.config import load_params
from cxr.training.runtime import configure, keep_freed_memory
if sys.argv[1] == "configured":
    configure(load_params(sys.argv[2]).train, torch.device("cpu"))
    assert keep_freed_memory()  # applies on this glibc (configure's own call returns nothing)
faults = []
for _ in range(int(sys.argv[3])):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    batch = torch.ones(64 * 2**20 // 4)  # 64 MiB: above glibc's largest default mmap threshold
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del batch
print(*faults)
"""
BATCHES, SETTLED = 12, 6


def batch_faults(variant: str, folder: Path) -> list[int]:
    params = folder / "params.yaml"
    params.write_text(committed("params.yaml"))
    done = subprocess.run(
        [sys.executable, "-c", BATCH_FAULTS, variant, str(params), str(BATCHES)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [int(count) for count in done.stdout.split()]


@pytest.mark.skipif(
    not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"), reason="glibc's allocator only"
)
def test_configured_process_reuses_freed_tensor_memory_instead_of_faulting_it_in(
    tmp_path: Path,
) -> None:
    # glibc's default unmaps every freed 64 MiB block and maps the next afresh: 16,384 pages of
    # 4 KiB to fault in again per batch (32 of 2 MiB where transparent huge pages are always on).
    # Configured, the heap may still grow for the first few batches: PyTorch asks for 64-byte
    # aligned blocks, and glibc takes a fresh one from the top of the heap while no freed block
    # has the slack alignment needs. Over 100 runs here it settled by the 4th batch, so only the
    # last 6 of 12 count, and one late growth among them is tolerated.
    default, configured = batch_faults("default", tmp_path), batch_faults("configured", tmp_path)
    assert len(default) == len(configured) == BATCHES
    settled_default, settled_configured = sum(default[-SETTLED:]), sum(configured[-SETTLED:])
    assert min(default[-SETTLED:]) >= 32, default  # every batch faulted in anew
    assert settled_configured * 4 < settled_default, (configured, default)
    # That it changes no computed byte: tests/benchmarks/test_freed_memory.py, and every
    # stage test that compares a model or report with its committed or earlier bytes.


def test_machine_kind_reads_this_cpu_as_lscpu_does() -> None:
    # lscpu (util-linux) reads the same CPU by its own code: the model name and flags that key
    # tests/pipeline/committed_models.yaml must be this CPU's, not another core's or a default
    english = {**os.environ, "LC_ALL": "C"}  # its field names are translated in other locales
    listed = subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=True, env=english
    ).stdout
    fields = dict(line.split(":", 1) for line in listed.splitlines() if ":" in line)
    kind = machine_kind()
    assert kind["cpu"] == fields["Model name"].strip()
    flags = set(fields["Flags"].split())
    assert kind["instruction_sets"] == [name for name in VECTOR_SETS if name in flags]
    assert "avx2" in flags  # the suite's premise: an x86-64 CPU with AVX2
    assert set(kind["caches"]) >= {"L1d", "L2"}, kind["caches"]

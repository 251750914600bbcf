"""benchmarks/freed_memory.py runs both allocator variants in fresh processes and finds that
they compute the same bytes."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers.project import PROJECT


def test_benchmark_compares_both_variants_and_finds_the_same_bytes() -> None:
    small = ["--model", "resnet18", "--size", "64", "--images", "32", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, "benchmarks/freed_memory.py", *small, "--steps", "1"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )

    assert done.returncode == 0, done.stderr
    assert "resnet18, 64 px, 2 threads" in done.stdout
    for phase in ("inference", "training"):
        for variant in ("glibc default", r"kept \(stages\)"):  # a row of numbers each
            assert re.search(rf"^{phase} +{variant} +[\d.]+ +[\d.]+ +[\d,]+$", done.stdout, re.M)
    assert done.stdout.count("as fast as the default; same bytes in every process") == 2

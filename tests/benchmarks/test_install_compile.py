"""benchmarks/install_compile.py: its timed commands run in the clone's venv with bytecode
writing on (as in a user's shell), so the modules a first run imports are compiled and counted;
its summary and ratios follow the runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.benchmarks import load_benchmark

install_compile = load_benchmark("install_compile")


def test_timed_command_runs_in_the_venv_and_writes_bytecode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # as a developer's shell may have it
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", ".venv"], cwd=tmp_path, check=True
    )
    (tmp_path / "probe.py").write_text("import sys\nassert sys.prefix.endswith('.venv')\n")
    before = install_compile.count_bytecode(tmp_path)

    took = install_compile.timed("python -c 'import probe'", tmp_path)

    assert took > 0
    assert install_compile.count_bytecode(tmp_path) == before + 1  # probe's .pyc
    with pytest.raises(subprocess.CalledProcessError):
        install_compile.timed("python -c 'import missing_module'", tmp_path)


def test_summary_takes_medians_and_report_gives_the_ratios() -> None:
    def run(install: float, then: float, pyc: int) -> dict:
        return {
            "install": install,
            "then": then,
            "total": install + then,
            "pyc_after_install": pyc,
            "pyc_after_then": pyc + 10,
        }

    runs = {
        "compile": [run(200, 150, 9000), run(220, 160, 9000), run(210, 170, 9000)],
        "no-compile": [run(140, 190, 100), run(130, 200, 100), run(150, 180, 100)],
    }
    summary = install_compile.summarise(runs)

    assert summary["compile"]["install"] == 210
    # run by run (350, 380, 380), not the sum of the medians (370)
    assert summary["compile"]["total"] == 380
    assert summary["no-compile"]["then"] == 190
    lines = install_compile.report(summary, 3, "dvc repro")
    assert lines[0].startswith("compile: install 210 s, first `dvc repro` 160 s, total 380 s")
    assert lines[-1] == (
        "--no-compile: install 1.50x as fast, first run 1.19x the time, "
        "total 1.15x as fast (+50 s saved)"
    )

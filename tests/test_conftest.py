"""The suite's own machinery (tests/conftest.py): the tests that share a pipeline run go to one
xdist worker, so the run is built once per session."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

GROUPED = """
import pytest

@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("n", range(4))
def test_grouped(n):
    pass

@pytest.mark.parametrize("n", range(4))
def test_free(n):
    pass
"""


def test_loadgroup_sends_a_group_to_one_worker(tmp_path: Path) -> None:
    # pyproject's `-n 2 --dist loadgroup`, with the installed pytest and pytest-xdist: pytest
    # 9.2 with xdist 3.8 dropped the groups silently (pytest-xdist issue 1386), and every
    # worker then built the shared pipeline runs itself.
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    options = ["-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *options], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ran = re.findall(r"\[(gw\d)\] .*PASSED \S+::(test_\w+)\[", done.stdout)
    assert len(ran) == 8, done.stdout
    workers = {worker for worker, name in ran if name == "test_grouped"}
    assert len(workers) == 1, f"the group ran on {sorted(workers)}:\n{done.stdout}"

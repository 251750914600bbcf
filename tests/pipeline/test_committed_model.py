"""The cross-machine evidence: a fresh copy of the project, with its committed params, retrains
models/model.pt to the bytes the committed dvc.lock records. That lock was written on a
development machine; wherever CI runs on a CPU of another kind (AVX2 only, or AVX-512), this is
the test that shows reproducible mode's claim across machines, where
tests/training/test_runtime.py can only emulate another CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.helpers.project import PROJECT, copy_project, run, stages_run

pytestmark = pytest.mark.e2e


def committed_model_md5() -> str:
    stages = yaml.safe_load((PROJECT / "dvc.lock").read_text())["stages"]
    (out,) = [o for o in stages["train"]["outs"] if o["path"] == "models/model.pt"]
    return out["md5"]


def test_fresh_copy_retrains_the_committed_model_bytes(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")  # committed params.yaml and dvc.lock
    done = run(["dvc", "repro", "train"], project)
    assert stages_run(done.stdout)[-1] == "train", done.stdout
    retrained = hashlib.md5((project / "models/model.pt").read_bytes()).hexdigest()
    assert retrained == committed_model_md5(), (
        "the default pipeline retrained here differs from the committed dvc.lock's model: "
        "reproducible mode did not hold on this CPU, or dvc.lock is stale (run `dvc repro` and "
        "commit it)"
    )

"""The cross-machine evidence: a fresh copy of the project, with its committed params, retrains
models/model.pt to the bytes measured on a CPU of this machine's kind (committed_models.yaml;
dvc.lock holds the model of the kind that last ran `dvc repro`). Where CI lands on a CPU with
another instruction set than the development machine's, this shows reproducible mode's claim
across machines, which tests/training/test_runtime.py can only emulate; CPUs of other kinds
train other bytes (oneDNN follows their cache sizes), and the table holds each kind measured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxr.training.runtime import machine_kind
from tests.helpers.project import committed, copy_project, run, stages_run

TABLE = Path(__file__).with_name("committed_models.yaml")


def committed_model_md5() -> str:
    stages = yaml.safe_load(committed("dvc.lock"))["stages"]
    (out,) = [o for o in stages["train"]["outs"] if o["path"] == "models/model.pt"]
    return out["md5"]


def entry_for(kind: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The entry for a CPU kind: name and instruction sets equal, and the caches too where the
    entry records them."""
    for entry in entries:
        keys = ["cpu", "instruction_sets"] + (["caches"] if "caches" in entry else [])
        if all(entry[key] == kind.get(key) for key in keys):
            return entry
    return None


def measured() -> list[dict[str, Any]]:
    return yaml.safe_load(TABLE.read_text())


def test_entry_matching_compares_name_sets_and_recorded_caches() -> None:
    # a table of its own: the committed one's entries change as the model's bytes do
    amd = {
        "cpu": "AMD EPYC",
        "instruction_sets": ["sse4_2", "avx", "avx2", "avx512f"],
        "caches": {"L1d": "32K", "L2": "1024K", "L3": "32768K"},
    }
    with_amx = ["sse4_2", "avx", "avx2", "avx512f", "amx_tile"]
    entries = [
        {"cpu": "Intel(R) Xeon(R) Processor", "instruction_sets": with_amx, "model_md5": "xeon"},
        {**amd, "model_md5": "epyc"},
    ]
    assert entry_for(amd, entries)["model_md5"] == "epyc"
    assert entry_for({**amd, "caches": {**amd["caches"], "L2": "512K"}}, entries) is None
    assert entry_for({**amd, "instruction_sets": amd["instruction_sets"][:3]}, entries) is None
    intel = {"cpu": "Intel(R) Xeon(R) Processor", "caches": {"L2": "2048K"}}
    intel = {**intel, "instruction_sets": with_amx}
    assert entry_for(intel, entries)["model_md5"] == "xeon"  # caches not recorded there
    assert entry_for({**intel, "cpu": "Intel(R) Core(TM) i7"}, entries) is None


def test_dvc_lock_holds_the_model_of_the_kind_that_wrote_it() -> None:
    """dvc.lock and the table cannot drift apart: the machine that last ran `dvc repro`
    (reports/environment.json) has its entry, and that entry is dvc.lock's model."""
    machine = json.loads(committed("reports/environment.json"))["machine"]
    entry = entry_for(machine, measured())
    assert entry is not None, (
        f"committed_models.yaml has no entry for {machine['cpu']}, the CPU that wrote dvc.lock: "
        "add it with dvc.lock's model md5"
    )
    assert entry["model_md5"] == committed_model_md5(), (
        "dvc.lock's model differs from committed_models.yaml's for the CPU that wrote it: "
        "update that entry and delete the kinds you cannot retrain on"
    )


@pytest.mark.e2e
def test_fresh_copy_retrains_the_model_measured_on_this_kind_of_cpu(tmp_path: Path) -> None:
    kind = machine_kind()
    entry = entry_for(kind, measured())
    if entry is None:  # not a failure: no claim is made for a kind nobody has measured
        pytest.skip(
            f"no model measured on this kind of CPU ({json.dumps(kind)}): CPUs of other kinds "
            "train other bytes (docs/reproducibility.md); committed_models.yaml says how to add it"
        )
    project = copy_project(tmp_path / "project")  # committed params.yaml and dvc.lock
    done = run(["dvc", "repro", "train"], project)
    assert stages_run(done.stdout)[-1] == "train", done.stdout
    retrained = hashlib.md5((project / "models/model.pt").read_bytes()).hexdigest()
    assert retrained == entry["model_md5"], (
        f"the default pipeline retrained on this {kind['cpu']} differs from the model measured "
        "on this kind of CPU: reproducible mode did not hold here, or a change moved the "
        "model's bytes and committed_models.yaml was not updated"
    )

"""The package's shape, held against the code: dvc.yaml lists exactly the code each stage runs;
no import cycles; each phase imports only the phases below it; package faces hold only their
map; importing the package changes nothing outside it; params.yaml names what the registries
hold."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxr.names import registries
from cxr.training.code import PACKAGE_DIR, deps_entries, imported_names, is_face
from tests.helpers.project import PROJECT, committed

STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
# Each phase and what it may import (besides itself); the top-level faces (cxr.names,
# cxr.predict) may import anything.
LAYERS = {
    "core": set(),
    "data": {"core"},
    "training": {"core", "data"},
    "evaluation": {"core", "data", "training"},
    "explanation": {"core", "data", "training"},
    "tracking": {"core"},
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """The package modules a file imports (wherever the import stands, TYPE_CHECKING aside)."""
    own = set(modules())
    return {name for name in imported_names(path) if name in own}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_yaml_deps_are_exactly_the_code_the_stage_runs(stage: str) -> None:
    script = PROJECT / STAGES[stage]["cmd"].split()[-1]
    declared = {
        entry if isinstance(entry, str) else next(iter(entry)) for entry in STAGES[stage]["deps"]
    }
    code = {entry for entry in declared if entry.startswith(("src/", "stages/"))}
    expected = deps_entries(script)
    block = "\n".join(f"      - {entry}" for entry in expected)
    assert code == set(expected), f"dvc.yaml stage {stage!r} deps should list:\n{block}"


def test_no_module_imports_itself_through_others() -> None:
    graph = {name: imports_of(path) - {name} for name, path in modules().items()}
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        for target in sorted(graph.get(name, ())):
            if target in trail:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in done:
                visit(target, [*trail, target])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def _phase(module: str) -> str:
    """`core` for cxr.core.config; the module itself for a top-level one (cxr.names)."""
    return [*module.split("."), ""][1]


def test_each_phase_imports_only_the_phases_below_it() -> None:
    wrong = []
    for name, path in modules().items():
        mine = _phase(name)
        if mine not in LAYERS:
            continue  # the top level: cxr, cxr.names, cxr.predict
        for target in imports_of(path):
            theirs = _phase(target)
            if theirs != mine and theirs not in LAYERS[mine]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_package_faces_hold_only_their_map() -> None:
    faces = sorted(PACKAGE_DIR.rglob("__init__.py"))
    assert len(faces) == 1 + len(LAYERS)
    for path in faces:
        assert is_face(path), f"{path} holds code; it may only hold its docstring"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no map"


# Third-party libraries are imported before the first snapshot: some change global state on
# import themselves (importing sklearn.metrics draws from Python's `random`), which is theirs.
SNAPSHOT = """
import json, os, random, sys
import numpy as np
import matplotlib, PIL.Image, torch, torchvision, pandas, scipy.optimize, sklearn.metrics
import Augmentor, imagehash, pydantic, requests, splitfolders, tqdm, yaml
def state():
    return {
        "environ": dict(os.environ),
        "random": repr(random.getstate()),
        "numpy": repr(np.random.get_state()[1][:8].tolist()),
        "torch": torch.initial_seed(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "threads": torch.get_num_threads(),
        "pil_max_pixels": PIL.Image.MAX_IMAGE_PIXELS,
        "matplotlib_backend": str(matplotlib.rcParams._get("backend")),
        "pyplot": "matplotlib.pyplot" in sys.modules,
    }
before = state()
import importlib, pkgutil, cxr
for module in pkgutil.walk_packages(cxr.__path__, "cxr."):
    importlib.import_module(module.name)
print(json.dumps({"before": before, "after": state()}))
"""


def test_importing_every_module_changes_nothing_outside_the_package() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, check=True
    )
    states = json.loads(done.stdout.splitlines()[-1])
    before, after = states["before"], states["after"]
    changed = {key for key in before if before[key] != after[key]}
    assert not changed, {key: (before[key], after[key]) for key in changed}


def _listed_names(params_text: str, dotted_key: str) -> list[str] | None:
    """The names params.yaml's comment at `dotted_key` lists (`a | b (note) | c`), or None
    where it lists none. The key's line is found by walking its path (`preprocess.method`
    is the `method:` below `preprocess:`, not gradcam's)."""
    lines = params_text.splitlines()
    at = -1
    for part in dotted_key.split("."):
        at = next(
            i
            for i, line in enumerate(lines)
            if i > at and re.match(rf"\s*{re.escape(part)}:", line)
        )
    comment = [lines[at].partition("#")[2]]
    above = at - 1
    while above >= 0 and lines[above].strip().startswith("#"):
        comment.insert(0, lines[above].strip().lstrip("#"))
        above -= 1
    text = re.sub(r"\([^)]*\)", "", " ".join(comment))  # notes in brackets are not names
    if "|" not in text:
        return None
    pieces = [piece.split() for piece in text.split("|")]
    return [pieces[0][-1], *(piece[0] for piece in pieces[1:])]


def test_params_yaml_lists_each_kinds_names_as_its_registry_holds_them() -> None:
    text = committed("params.yaml")
    checked = 0
    for registry in registries():
        listed = _listed_names(text, registry.key.removesuffix("[].name"))
        if listed is None:  # long lists: the comment points to `python -m cxr.names`
            assert "python -m cxr.names" in text
            continue
        assert listed == list(registry.names()), registry.key
        checked += 1
    assert checked >= 5


def test_names_command_prints_every_registry() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cxr.names"], capture_output=True, text=True, check=True
    )
    for registry in registries():
        assert f"{registry.key} ({registry.kind}): {', '.join(registry.names())}" in done.stdout

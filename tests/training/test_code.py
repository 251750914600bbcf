"""The code a stage runs: its script's import closure inside the package, and the dvc.yaml deps
made of it."""

from __future__ import annotations

from pathlib import Path

from cxr.training.code import code_hash, deps_entries, import_closure


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tiny_project(root: Path) -> Path:
    """src/cxr with faces, a function-level import, a TYPE_CHECKING-only import and a
    tracking module; stages/s.py imports core's a and c and the tracking module."""
    package = root / "src" / "cxr"
    write(package / "__init__.py", '"""The map."""\n')
    write(package / "core" / "__init__.py", '"""Core."""\n')
    write(package / "core" / "a.py", "def f():\n    from cxr.core import b\n    return b\n")
    write(package / "core" / "b.py", "X = 1\n")
    write(
        package / "core" / "c.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cxr.core import d\n",
    )
    write(package / "core" / "d.py", "Y = 2\n")
    write(package / "tracking" / "__init__.py", "import os\n")  # not a face: it runs code
    write(package / "tracking" / "log.py", "from cxr.core import b\n")
    return write(root / "stages" / "s.py", "from cxr.core import a, c\nimport cxr.tracking.log\n")


def test_closure_follows_function_imports_and_packages_and_skips_type_checking(
    tmp_path: Path,
) -> None:
    script = tiny_project(tmp_path)
    package = tmp_path / "src" / "cxr"
    names = [p.relative_to(package).as_posix() for p in import_closure(script, package_dir=package)]
    # d.py is imported only under TYPE_CHECKING; package faces and MLflow-style tracking code
    # run when the stage runs, so they are deps too
    assert names == [
        "__init__.py",
        "core/__init__.py",
        "core/a.py",
        "core/b.py",
        "core/c.py",
        "tracking/__init__.py",
        "tracking/log.py",
    ]
    entries = deps_entries(script, package_dir=package)
    assert entries == [
        "stages/s.py",
        "src/cxr/__init__.py",
        "src/cxr/core/__init__.py",
        "src/cxr/core/a.py",
        "src/cxr/core/b.py",
        "src/cxr/core/c.py",
        "src/cxr/tracking",
    ]
    (package / "core" / "d.py").unlink()  # now the stage runs all of core's code
    assert deps_entries(script, package_dir=package) == [
        "stages/s.py",
        "src/cxr/__init__.py",
        "src/cxr/core",
        "src/cxr/tracking",
    ]


def test_code_hash_follows_content_and_names(tmp_path: Path) -> None:
    a, b = write(tmp_path / "a.py", "x = 1\n"), write(tmp_path / "b.py", "x = 1\n")
    assert code_hash([a]) != code_hash([b])  # same bytes, another file
    before = code_hash([a, b])
    a.write_text("x = 2\n")
    assert code_hash([a, b]) != before

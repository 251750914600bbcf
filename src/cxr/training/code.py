"""The code a stage runs: the import closure of its script inside the `cxr` package, and the
deps dvc.yaml lists for it (`python -m cxr.training.code stages/<stage>.py` prints them).

A stage's result depends on the package modules its script imports, directly or through other
modules (imports inside functions and package `__init__.py` files included; `if TYPE_CHECKING:`
imports, which never run, excluded). dvc.yaml must list exactly these as the stage's deps (a
test holds it to that), and the train stage keys its resume state by their hash, so a code
change re-runs the stage and never resumes the old code's state. The MLflow tracking modules
count too: a stage whose logging changed runs again and logs anew.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "cxr"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROJECT_DIR = PACKAGE_DIR.parents[1]  # src/cxr -> the project root


def module_file(name: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The file of module `name` (`cxr.core.config`), or None if it is no module of ours."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported_names(path: Path) -> set[str]:
    """Every module a file imports (and, for `from M import x`, `M.x` too: x may be a module),
    wherever the import stands, except under `if TYPE_CHECKING:`."""
    names: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while pending:
        node = pending.pop()
        if _type_checking_block(node):
            pending.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return names


def is_face(path: Path) -> bool:
    """An `__init__.py` that holds nothing but a docstring: importing it runs nothing."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body
    )


def _packages(name: str) -> list[str]:
    """The packages importing `name` runs first: `cxr`, `cxr.core` for `cxr.core.config`."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_closure(script: Path, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The package files `script` runs, sorted."""
    seen: dict[str, Path] = {}
    pending = list(imported_names(script))
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = module_file(name, package_dir)
        if path is None:
            continue
        seen[name] = path
        pending.extend(imported_names(path))
        pending.extend(_packages(name))
    return sorted(set(seen.values()))


def code_hash(files: list[Path]) -> str:
    """sha256 over the files' names (relative to the package) and contents, in order."""
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(PACKAGE_DIR.parent) if path.is_relative_to(PACKAGE_DIR) else path
        digest.update(f"{Path(name).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def deps_entries(script: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """dvc.yaml deps for the stage `script` (paths relative to the project root): the script,
    then each package folder whose code the stage runs all of, else the files it runs."""
    root = package_dir.parents[1]
    closure = set(import_closure(script, package_dir=package_dir))
    entries = [script.resolve().relative_to(root).as_posix()]
    for folder in sorted({path.parent for path in closure}):
        code = set(folder.glob("*.py"))
        if folder != package_dir and code <= closure:
            entries.append(folder.relative_to(root).as_posix())
        else:
            entries += sorted(path.relative_to(root).as_posix() for path in code & closure)
    return entries


if __name__ == "__main__":
    import sys

    for argument in sys.argv[1:]:
        print(f"{argument}:")
        for entry in deps_entries(Path(argument)):
            print(f"  - {entry}")

"""The scripts of benchmarks/ as modules, for tests of their logic (they are not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py, imported under `name` (its `main()` is not run). Its imports of
    sibling scripts resolve as when it runs as `python benchmarks/<name>.py`."""
    folder = str(ROOT / "benchmarks")
    spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{name}.py")
    assert spec and spec.loader, name
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module

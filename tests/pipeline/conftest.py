"""The one pipeline run the end-to-end modules share: `dvc repro` with TINY_PARAMS in a
temporary git+DVC copy of the project, its results committed as the baseline. Tests that
change the workspace restore it (test_pipeline's `project`) or only add experiments on top
(test_experiments), so a full run is paid once per session, not once per module."""

from __future__ import annotations

import pytest

from tests.helpers.project import (
    TINY_PARAMS,
    copy_project,
    git_commit,
    lock_outs,
    metrics_bytes,
    run,
    set_params,
    tree_hashes,
)


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny pipeline, reproduced once and committed: its project folder, what `dvc repro`
    printed, and the bytes of its metrics and augmented images."""
    project = copy_project(tmp_path_factory.mktemp("e2e") / "project")
    set_params(project, TINY_PARAMS)
    git_commit(project, "tiny params")
    first = run(["dvc", "repro"], project)
    git_commit(project, "pipeline results")
    return {
        "project": project,
        "output": first.stdout,
        "errors": first.stderr,
        "metrics": metrics_bytes(project),
        "augmented": tree_hashes(project / "data" / "augmented"),
        "outs": lock_outs(project),
    }

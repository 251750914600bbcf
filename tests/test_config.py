"""params.yaml → typed config: defaults parse, wrong values fail before any work, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT, tool_env

from cxr.config import Params, ParamsError, load_params, parse_params


def project_params() -> dict:
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


def with_overrides(override: dict) -> dict:
    """The project's params with some groups' keys (or top-level values) replaced."""
    raw = project_params()
    for group, value in override.items():
        if isinstance(value, dict):
            raw[group].update(value)
        else:
            raw[group] = value
    return raw


def test_project_params_parse_and_lr_is_top_level() -> None:
    params = load_params(PROJECT / "params.yaml")
    assert isinstance(params, Params)
    assert params.lr == project_params()["lr"]


def test_every_key_in_params_yaml_is_known_to_the_config() -> None:
    # extra="forbid" throughout: parsing the file proves no key is ignored; an added typo fails.
    raw = project_params()
    raw["train"]["epoch"] = 3
    with pytest.raises(ParamsError, match=r"train\.epoch: unknown key"):
        parse_params(raw)


def test_every_stage_declares_exactly_the_params_groups_it_reads() -> None:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    declared = {name: set(stage.get("params", [])) for name, stage in stages.items()}
    assert declared == {
        "download": {"data"},
        "split": {"split"},
        "augment": {"augment"},
        "train": {"lr", "train", "tracking.registered_model"},
        "evaluate": {"evaluate"},
        "gradcam": {"gradcam"},
    }


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"train": {"model": "resnet9000"}}, "train.model"),
        ({"split": {"ratio": [0.7, 0.2, 0.2]}}, "split.ratio"),
        ({"lr": -0.1}, "lr"),
        ({"train": {"weights": "IMAGENET_BOGUS"}}, "train.weights"),
        ({"augment": {"target": "most"}}, "augment.target"),
    ],
)
def test_wrong_values_name_the_key(override: dict, key: str) -> None:
    raw = with_overrides(override)
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert f"  {key}:" in str(caught.value)


def run_stage_in(folder: Path, stage: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROJECT / "stages" / f"{stage}.py")],
        cwd=folder,
        env=tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{store}"),
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    ("stage", "override", "key"),
    [
        ("download", {"data": {"source": "no/such/folder"}}, "data.source"),
        ("train", {"train": {"model": "resnet9000"}}, "train.model"),
        ("split", {"split": {"ratio": [0.5, 0.1, 0.1]}}, "split.ratio"),
        ("train", {"lr": -1}, "lr"),
    ],
)
def test_stage_fails_before_any_work(tmp_path: Path, stage: str, override: dict, key: str) -> None:
    raw = with_overrides(override)
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    done = run_stage_in(project, stage, tmp_path / "mlflow.db")
    assert done.returncode == 1, done.stderr
    assert key in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml"]  # nothing written

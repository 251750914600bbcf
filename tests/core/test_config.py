"""params.yaml → typed config: defaults parse, wrong values fail before any work, naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxr.core.config import EvaluateConfig, Params, ParamsError, load_params, parse_params
from cxr.names import registries
from tests.helpers.project import PROJECT, committed, project_params, tool_env


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
    params = parse_params(project_params())
    assert isinstance(params, Params)
    assert params.lr == project_params()["lr"]


def test_every_key_in_params_yaml_is_known_to_the_config() -> None:
    # extra="forbid" throughout: parsing the file proves no key is ignored; an added typo fails.
    raw = project_params()
    raw["train"]["epoch"] = 3
    with pytest.raises(ParamsError, match=r"train\.epoch: unknown key"):
        parse_params(raw, registries())


def declared_params(stage: dict) -> set[str]:
    """A stage's params entries; a whole-file entry (`- params.yaml:`) as the file name."""
    return {next(iter(entry)) if isinstance(entry, dict) else entry for entry in stage["params"]}


RUNTIME = {"train.reproducible", "train.threads"}


def test_every_stage_declares_exactly_the_params_groups_it_reads() -> None:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    declared = {name: declared_params(stage) for name, stage in stages.items()}
    assert declared == {
        "params": {"params.yaml"},  # every key: validated before any other stage runs
        "download": {"data"},
        "split": {"split"},
        "augment": {"augment"},
        "train": {"lr", "train", "preprocess", "tracking.registered_model"},
        # the model's kernels and threads (cxr.training.runtime) in every stage that runs it
        # external folders are read as data.source is (layouts, aliases, metadata CSV)
        "evaluate": {
            "evaluate",
            "data.class_aliases",
            "data.extensions",
            "data.metadata",
            "split.group_by",  # the patients the intervals resample
            *RUNTIME,
        },
        "gradcam": {"gradcam", *RUNTIME},
        "embed": {"embeddings", "evaluate.batch_size", *RUNTIME},
        "defer": {"deferral", "conformal", "evaluate.batch_size", "evaluate.confidence", *RUNTIME},
        "audit": {
            "audit",
            "evaluate.batch_size",
            "evaluate.bootstrap_resamples",
            "evaluate.confidence",
            "evaluate.seed",
            "split.group_by",  # the patients of the probes' folds and the intervals
            *RUNTIME,
        },
    }


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"train": {"model": "resnet9000"}}, "train.model"),
        ({"split": {"ratio": [0.7, 0.2, 0.2]}}, "split.ratio"),
        ({"lr": -0.1}, "lr"),
        ({"train": {"weights": "IMAGENET_BOGUS"}}, "train.weights"),
        ({"augment": {"target": "most"}}, "augment.target"),
        ({"augment": {"target": 0.0}}, "augment.target"),
        ({"augment": {"target": 1000.0}}, "augment.target"),  # a typo's disk-filling copies
        ({"lr": float("inf")}, "lr"),  # issue 16, case 6
        ({"lr": float("nan")}, "lr"),
        ({"lr": 5.0}, "lr"),
        ({"train": {"batch_size": 1}}, "train.batch_size"),  # case 2: trains nothing
        ({"evaluate": {"confidence": float("nan")}}, "evaluate.confidence"),
    ],
)
def test_wrong_values_name_the_key(override: dict, key: str) -> None:
    raw = with_overrides(override)
    with pytest.raises(ParamsError) as caught:
        parse_params(raw, registries())
    assert f"  {key}:" in str(caught.value)


def test_lr_inf_in_params_yaml_is_refused_as_not_finite(tmp_path: Path) -> None:
    text = re.sub(r"^lr: .*$", "lr: .inf", committed("params.yaml"), count=1, flags=re.M)
    assert "\nlr: .inf\n" in text
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=r"  lr: Input should be a finite number"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    "train, message",
    [
        ({"epochs": True}, r"train\.epochs: Input should be a valid integer"),
        ({"epochs": 1e29}, r"train\.epochs: Input should be a valid integer"),
        ({"epochs": 20_000}, r"train\.epochs: Input should be less than or equal to 10000"),
        ({"epochs": "4"}, r"train\.epochs: Input should be a valid integer"),
        ({"reproducible": 1}, r"train\.reproducible: Input should be a valid boolean"),
        ({"amp": "yes"}, r"train\.amp: Input should be a valid boolean"),
    ],
)
def test_counts_and_switches_take_only_their_own_type(train: dict, message: str) -> None:
    """A bool is not a count, a float or a string is not one either, and 1 or "yes" is not a
    switch: YAML's loose values are refused, naming the key, rather than read as 1 or 1e29."""
    with pytest.raises(ParamsError, match=message):
        parse_params(with_overrides({"train": train}), registries())


def test_batch_size_one_says_why() -> None:
    with pytest.raises(ParamsError, match=r"train\.batch_size: must be >= 2: BatchNorm"):
        parse_params(with_overrides({"train": {"batch_size": 1}}), registries())


def test_missing_key_is_an_error_naming_it_and_the_default_to_copy() -> None:
    raw = project_params()
    del raw["train"]["epochs"]
    del raw["data"]["archive"]["max_mb"]
    with pytest.raises(ParamsError) as caught:
        parse_params(raw, registries())
    message = str(caught.value)
    assert "  train.epochs: missing; add `epochs: 4` under `train:` (the default)" in message
    assert "  data.archive.max_mb: missing; add `max_mb: 4096` under `data.archive:`" in message


def test_missing_section_lists_every_default(tmp_path: Path) -> None:
    raw = project_params()
    del raw["evaluate"]
    with pytest.raises(ParamsError) as caught:
        parse_params(raw, registries())
    message = str(caught.value)
    assert "  evaluate: missing; add it at the top level (the defaults):" in message
    # the block in the message is valid params.yaml: pasted back, the file parses again
    block = message.split("(the defaults):\n", 1)[1]
    raw["evaluate"] = yaml.safe_load(block.replace("\n      ", "\n").strip())["evaluate"]
    assert parse_params(raw, registries()).evaluate == EvaluateConfig()


def test_every_dataclass_field_is_required() -> None:
    # Generic, driven by the dataclasses: a key added to config.py is required without any
    # list to update. Delete each leaf of params.yaml in turn; each must be named as missing.
    raw = project_params()
    leaves = [
        (group, key) for group, value in raw.items() if isinstance(value, dict) for key in value
    ]
    assert len(leaves) > 40
    for group, key in leaves:
        broken = project_params()
        del broken[group][key]
        with pytest.raises(ParamsError, match=rf"  {group}\.{key}: missing; add"):
            parse_params(broken, registries())


@pytest.mark.parametrize(
    ("source", "secret"),
    [
        ("https://bob:hunter2@example.org/cxr.zip", "hunter2"),
        ("https://ghp_t0kenvalue@example.org/cxr.zip", "ghp_t0kenvalue"),
        ("https://example.org/cxr.zip?X-Amz-Signature=abcd1234&X-Amz-Expires=60", "abcd1234"),
    ],
)
def test_url_with_credentials_is_refused_without_echoing_them(source: str, secret: str) -> None:
    # issue 16, case 3: DVC stores params verbatim; refusing at parse keeps them out.
    with pytest.raises(ParamsError) as caught:
        parse_params(with_overrides({"data": {"source": source}}), registries())
    message = str(caught.value)
    assert "  data.source: the URL carries" in message and "~/.netrc" in message
    assert secret not in message


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
        ("params", {"lr": float("inf")}, "lr"),
        ("params", {"data": {"source": "no/such/folder"}}, "data.source"),
        ("params", {"data": {"source": "https://u:hunter2@example.org/a.zip"}}, "data.source"),
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
    assert "hunter2" not in done.stdout + done.stderr
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml"]  # nothing written

"""Registries of names: one per kind, read by params validation with the choices spelled out."""

from __future__ import annotations

import pytest

from cxr.core.config import ParamsError, parse_params
from cxr.core.errors import ConfigError
from cxr.core.registry import Registry
from cxr.names import registries
from tests.helpers.project import project_params


def test_a_registry_keeps_order_and_refuses_a_second_entry_of_a_name() -> None:
    colours: Registry[int] = Registry("colour", "paint.colour")
    colours.register("red", 1)
    colours.register("blue", 2)
    assert colours.names() == ("red", "blue") and colours["blue"] == 2
    with pytest.raises(ValueError, match="colour 'red' is registered twice"):
        colours.register("red", 3)


def test_an_unknown_name_names_the_key_and_the_choices() -> None:
    colours: Registry[int] = Registry("colour", "paint.colour")
    colours.register("red", 1)
    with pytest.raises(
        ConfigError, match=r"paint\.colour: unknown colour 'green'; choose one of: red"
    ):
        colours["green"]
    with pytest.raises(ValueError, match="unknown colour 'green'"):
        colours.check("green")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "optimizer", "lion"),
        ("train", "scheduler", "onecycle"),
        ("train", "finetune", "partial"),
        ("train", "select_by", "val_auc"),
        ("gradcam", "method", "lime"),
    ],
)
def test_params_names_are_checked_against_the_registries_handed_over(
    section: str, key: str, value: str
) -> None:
    raw = project_params()
    raw[section][key] = value
    with pytest.raises(ParamsError) as caught:
        parse_params(raw, registries())
    registry = next(r for r in registries() if r.key == f"{section}.{key}")
    assert f"  {section}.{key}: unknown {registry.kind} {value!r}" in str(caught.value)
    assert ", ".join(registry.names()) in str(caught.value)


def test_an_unknown_augment_operation_and_bad_arguments_name_the_item() -> None:
    raw = project_params()
    raw["augment"]["operations"] = [
        {"name": "crop_centre", "probability": 0.5, "args": {}},
        {"name": "rotate", "probability": 0.5, "args": {"max_left_rotation": 10}},
    ]
    with pytest.raises(ParamsError) as caught:
        parse_params(raw, registries())
    message = str(caught.value)
    assert "augment.operations.0.name: unknown augment operation 'crop_centre'" in message
    assert "augment.operations.1: rotate:" in message  # Augmentor's own signature check

"""Model factory: every architecture builds and trains a step; weights only via torchvision's
weights API (a cached file is used, a missing one fails naming the file); bad params name keys."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from cxr.config import ParamsError, parse_params
from cxr.models import MODEL_SPECS, build_model, get_submodule, weights_file


@pytest.mark.parametrize("num_classes", [3, 4])
@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_every_model_builds_and_trains_a_step(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes).train()
    head = get_submodule(model, MODEL_SPECS[name].head)
    out_features = getattr(head, "out_features", None) or head.out_channels
    assert out_features == num_classes
    size = max(32, MODEL_SPECS[name].min_size)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, num_classes)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_weights_api_loads_a_cached_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """The file torchvision expects in $TORCH_HOME/hub/checkpoints is what gets loaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = weights_file(weights)
    assert cached == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    torch.manual_seed(123)
    saved = torchvision.models.resnet18().state_dict()
    cached.parent.mkdir(parents=True)
    torch.save(saved, cached)
    model = build_model("resnet18", 3, "IMAGENET1K_V1")
    loaded = model.state_dict()
    backbone = [key for key in saved if not key.startswith("fc.")]
    assert backbone and all(torch.equal(loaded[key], saved[key]) for key in backbone)
    assert loaded["fc.weight"].shape == (3, 512)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


def test_offline_without_cached_weights_fails_at_once_naming_the_file(tmp_path: Path) -> None:
    """The train stage stops before any data work with the missing file's name and path."""
    sys.path.insert(0, str(Path(__file__).parent))
    from train_project import make_project, stage_env, train_command

    root = make_project(tmp_path / "p", per_class=2, weights="DEFAULT")
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = stage_env(root, TORCH_HOME=str(tmp_path / "torch"), HTTPS_PROXY=proxy, https_proxy=proxy)
    start = time.monotonic()
    done = subprocess.run(train_command(), cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in done.stderr
    assert "train.weights: none" in done.stderr
    assert not (root / "models").exists()  # stopped before training wrote anything
    assert not (root / ".cxr_cache").exists()  # ... and before decoding any image
    assert time.monotonic() - start < 120


@pytest.mark.parametrize(
    ("train", "lr", "key"),
    [
        ({"model": "resnet9000"}, 0.001, "train.model"),
        ({}, -0.1, "lr"),
        ({"finetune": "partial"}, 0.001, "train.finetune"),
        ({"imbalance": "smote"}, 0.001, "train.imbalance"),
        ({"label_smoothing": 1.5}, 0.001, "train.label_smoothing"),
        ({"scheduler": "warmup"}, 0.001, "train.scheduler"),
    ],
)
def test_wrong_train_params_name_the_key(train: dict, lr: float, key: str) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params({"lr": lr, "train": train})
    assert f"  {key}:" in str(caught.value)

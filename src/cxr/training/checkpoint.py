"""Model checkpoints: weights plus the card that says how the model was trained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.core.errors import DataError
from cxr.core.fsio import atomic_file
from cxr.training.models import MODELS, build_model
from cxr.training.preprocessing import Preprocessing


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint needs besides weights to be used exactly as it was trained."""

    arch: str
    classes: tuple[str, ...]
    image_size: int
    weights: str  # the pretrained weights it started from, or `none`
    epoch: int  # the epoch whose weights were kept
    weights_sha256: str = ""  # sha256 of the pretrained weights file ("" from scratch)
    # cxr.training.preprocessing settings the model was trained with; {} (older checkpoints): none
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def prep(self) -> Preprocessing:
        """The model's preprocessing."""
        return Preprocessing.from_card(self.preprocessing)

    @property
    def mean(self) -> tuple[float, float, float]:
        return MODELS[self.arch].mean

    @property
    def std(self) -> tuple[float, float, float]:
        return MODELS[self.arch].std


def save_checkpoint(path: Path, model: nn.Module, card: ModelCard) -> None:
    """Weights plus model card, written atomically; equal models give equal bytes."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": 1, "card": asdict(card), "state_dict": state}
    # Into an open file, not a path: torch.save names the archive's root folder after the file
    # it is given, which here would be the scratch name, unique to every write.
    with atomic_file(path) as scratch, scratch.open("wb") as handle:
        torch.save(payload, handle)


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
    if not isinstance(payload, dict) or "card" not in payload or "state_dict" not in payload:
        raise DataError(
            f"{refused} It holds no model card (architecture, classes, image size): a bare "
            "weights file can start training as train.weights, but cannot be used to predict."
        )
    try:
        raw = payload["card"]
        card = ModelCard(**{**raw, "classes": tuple(raw["classes"])})
        model = build_model(card.arch, len(card.classes), weights="none")
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # another format
        first = (str(err).splitlines() or [""])[0][:200]
        raise DataError(f"{refused} ({type(err).__name__}: {first})") from None
    mismatch = state_mismatch(model.state_dict(), payload["state_dict"])
    if mismatch:
        raise DataError(
            f"{path}: its weights do not fit its own card ({card.arch}, {len(card.classes)} "
            f"classes): {mismatch}. The file was altered or written by other code; use the "
            "models/model.pt of a `dvc repro train` run."
        )
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), card


def state_mismatch(ours: dict, theirs: Any, shown: int = 4) -> str:
    """What keeps `theirs` from loading into a model whose state is `ours`: missing and
    unexpected keys and shape differences, the first few of each named ("" when it fits)."""
    if not isinstance(theirs, dict):
        return f"its state_dict is a {type(theirs).__name__}, not a mapping of tensors"

    def listed(items: list[str]) -> str:
        more = f" … ({len(items)} in all)" if len(items) > shown else ""
        return ", ".join(items[:shown]) + more

    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [
        f"{k} {tuple(theirs[k].shape)} in the file, {tuple(ours[k].shape)} in the model"
        for k in ours
        if k in theirs and getattr(theirs[k], "shape", None) != ours[k].shape
    ]
    parts = [
        f"shape of {listed(shapes)}" if shapes else "",
        f"missing {listed(missing)}" if missing else "",
        f"unexpected {listed(unexpected)}" if unexpected else "",
    ]
    return "; ".join(p for p in parts if p)

"""A training run's state after each epoch: its history, the kept epoch, and what resumes it.

Resuming is exact on CPU because nothing random carries over between epochs except what the
state holds: epoch `e`'s sample order, augmentation draws and dropout masks derive from
(train.seed, e, rank) alone, and model, optimizer, scheduler and grad-scaler states, history
and the best weights so far are saved atomically after every epoch. A state is resumed only
under the key it was saved with: the same train params, lr, data, code and world size.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxr.core.config import TrainConfig
from cxr.core.fsio import atomic_file
from cxr.core.registry import Registry
from cxr.training.code import code_hash, import_closure


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_balanced_accuracy: float
    val_macro_f1: float
    lr: float  # the lr of the epoch's last optimizer step
    images_per_second: float  # wall-clock throughput of the training pass

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# train.select_by -> the epoch's score (higher is better). Ties go to the lower val loss: on a
# small val split several epochs often share a balanced accuracy.
SELECTION: Registry[Callable[[EpochStats], tuple[float, ...]]] = Registry(
    "selection rule", "train.select_by"
)
SELECTION.register("val_loss", lambda s: (-s.val_loss,))
SELECTION.register("val_balanced_accuracy", lambda s: (s.val_balanced_accuracy, -s.val_loss))
SELECTION.register("val_macro_f1", lambda s: (s.val_macro_f1, -s.val_loss))
SELECTION.register("last", lambda s: (float(s.epoch),))


@dataclass
class TrainState:
    """Everything a resumed run needs; saved after each epoch (see `save_state`)."""

    key: str
    epoch: int = 0  # the last complete epoch
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped: bool = False  # early stopping ended the run
    model: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, int] = field(default_factory=dict)
    ema: dict[str, Any] = field(default_factory=dict)  # train.ema_decay: the averaged model


def save_state(path: Path, state: TrainState) -> None:
    payload = {name: getattr(state, name) for name in state.__dataclass_fields__}
    payload["history"] = [stats.as_dict() for stats in state.history]
    with atomic_file(path) as scratch:
        torch.save(payload, scratch)


# What torch.load raises for an empty, truncated, corrupt or refused (code-carrying) file; any
# other error (a permission, a full disk, a bug) stops the stage.
UNREADABLE = (EOFError, KeyError, RuntimeError, pickle.UnpicklingError)


def load_state(path: Path | None, key: str) -> TrainState:
    """The checkpoint at `path` if it was written for `key` (same params and data), else a
    fresh state: a checkpoint of other params or data must never be resumed."""
    if path is None or not path.is_file():
        return TrainState(key)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as err:  # a damaged state only costs the epochs it held
        print(f"train: ignoring unreadable checkpoint {path} ({type(err).__name__}: {err})")
        return TrainState(key)
    if not isinstance(payload, dict) or payload.get("key") != key:
        print(f"train: checkpoint {path} is for other params or data; starting fresh")
        return TrainState(key)
    payload["history"] = [EpochStats(**row) for row in payload["history"]]
    return TrainState(**payload)


@dataclass(frozen=True)
class FitResult:
    history: list[EpochStats]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    resumed_from: int = 0  # the epoch a checkpoint restored (0: a fresh start)

    @property
    def best(self) -> EpochStats:
        return self.history[self.best_epoch - 1]


def resume_key(
    cfg: TrainConfig, lr: float, data_keys: list[str], world_size: int, script: Path
) -> str:
    """A checkpoint is resumed only for the same train params, lr, data, code (the stage
    `script` and the package code it runs, `cxr.core.code`) and world size."""
    identity = {
        "train": asdict(cfg),
        "lr": lr,
        "data": data_keys,
        "code": code_hash([script, *import_closure(script)]),
        "world": world_size,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

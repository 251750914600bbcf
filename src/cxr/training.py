"""Fine-tuning: optimiser and scheduler factories, the epoch loop, early stopping.

`fit` trains on a PixelSet, validates after each epoch, keeps the weights of the epoch with
the lowest validation loss (the model that evaluate uses) and reports every epoch to a
callback, so the stage can write the history and log it to MLflow as it goes.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from cxr.config import TrainConfig
from cxr.data import BatchAugment, Normalize, PixelSet, batch_indices
from cxr.errors import ConfigError


def select_device(requested: str) -> torch.device:
    """`auto` → CUDA, else MPS, else CPU; an explicit device must exist."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available[requested]:
        raise ConfigError(
            f"train.device: {requested} is not available on this machine; use auto or cpu"
        )
    return torch.device(requested)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every RNG training touches; on CPU also insist on deterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:  # GPU runs trade bit-exactness for cuDNN's fastest kernels
        torch.backends.cudnn.benchmark = True
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, cfg, lr: torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg, lr: torch.optim.AdamW(
        params, lr=lr, weight_decay=cfg.weight_decay
    ),
    "sgd": lambda params, cfg, lr: torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    ),
}

SCHEDULERS: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler | None]] = {
    "none": lambda optimizer, cfg: None,
    "step": lambda optimizer, cfg: torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=cfg.step_size, gamma=cfg.gamma
    ),
    "cosine": lambda optimizer, cfg: torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.epochs
    ),
}


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    images_per_second: float  # wall-clock throughput of the training pass

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class FitResult:
    history: list[EpochStats]
    best_epoch: int
    best_state: dict[str, torch.Tensor]

    @property
    def best(self) -> EpochStats:
        return self.history[self.best_epoch - 1]


def train_one_epoch(
    model: nn.Module,
    data: PixelSet,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    augment: BatchAugment,
    normalize: Normalize,
) -> tuple[float, float, float]:
    """One pass over the data; returns mean loss, accuracy and images per second."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for index in batch_indices(len(data), batch_size, shuffle=True, generator=generator):
        if len(index) < 2:  # BatchNorm cannot train on a single image
            continue
        pixels = data.pixels[index].to(device, non_blocking=True)
        labels = data.labels[index].to(device, non_blocking=True)
        inputs = normalize(augment(pixels, generator))
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(index)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(index)
    seconds = time.perf_counter() - start
    return total_loss / max(seen, 1), correct / max(seen, 1), seen / max(seconds, 1e-9)


@torch.no_grad()
def predict_logits(
    model: nn.Module, pixels: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits for every image, in order, on the CPU."""
    model.eval()
    normalize = Normalize().to(device)
    outputs = [
        model(normalize(pixels[index].to(device))).float().cpu()
        for index in batch_indices(len(pixels), batch_size, shuffle=False)
    ]
    return torch.cat(outputs)


def fit(
    model: nn.Module,
    train: PixelSet,
    val: PixelSet,
    cfg: TrainConfig,
    lr: float,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
) -> FitResult:
    """Train for cfg.epochs (or until early stopping); keep the lowest-val-loss weights."""
    generator = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    optimizer = OPTIMIZERS[cfg.optimizer](model.parameters(), cfg, lr)
    scheduler = SCHEDULERS[cfg.scheduler](optimizer, cfg)
    loss_fn = nn.CrossEntropyLoss()
    augment, normalize = BatchAugment(), Normalize().to(device)
    history: list[EpochStats] = []
    best_epoch, best_loss, best_state = 0, float("inf"), {}
    for epoch in range(1, cfg.epochs + 1):
        lr_now = optimizer.param_groups[0]["lr"]
        train_loss, train_acc, speed = train_one_epoch(
            model, train, optimizer, loss_fn, cfg.batch_size, device, generator, augment, normalize
        )
        logits = predict_logits(model, val.pixels, cfg.batch_size, device)
        val_loss = float(nn.functional.cross_entropy(logits, val.labels))
        predicted = logits.argmax(1).numpy()
        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_acc,
            val_loss=val_loss,
            val_accuracy=float((predicted == val.labels.numpy()).mean()),
            val_macro_f1=float(
                f1_score(
                    val.labels.numpy(),
                    predicted,
                    average="macro",
                    labels=range(len(val.classes)),
                    zero_division=0,
                )
            ),
            lr=lr_now,
            images_per_second=speed,
        )
        history.append(stats)
        on_epoch(stats)
        if val_loss < best_loss:
            best_epoch, best_loss = epoch, val_loss
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if scheduler is not None:
            scheduler.step()
        if cfg.early_stopping_patience and epoch - best_epoch >= cfg.early_stopping_patience:
            break
    return FitResult(history, best_epoch, best_state)


def summarize(result: FitResult, train_images: int, val_images: int) -> dict:
    """metrics/train.json: the kept epoch's validation scores; no timings, so reruns with
    the same inputs give identical bytes."""
    best = result.best
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_images": train_images,
        "val_images": val_images,
        "train_loss": round(best.train_loss, 6),
        "val_loss": round(best.val_loss, 6),
        "val_accuracy": round(best.val_accuracy, 6),
        "val_macro_f1": round(best.val_macro_f1, 6),
    }

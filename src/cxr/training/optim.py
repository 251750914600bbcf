"""Optimizers and learning-rate schedules, by the names params.yaml uses."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from cxr.core.config import TrainConfig

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, cfg, lr: torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg, lr: torch.optim.AdamW(
        params, lr=lr, weight_decay=cfg.weight_decay
    ),
    "sgd": lambda params, cfg, lr: torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    ),
}


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """lr factor at optimizer step `s`: linear warm-up to 1 over `warmup_steps`, then a cosine
    decay to 0 at `total_steps` (a model that starts pretrained must not be shaken by a full
    lr on its first, randomly-headed steps; the decay never cuts the lr before it is used)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _cosine(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int) -> Any:
    warmup = round(cfg.warmup_epochs * steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.epochs * steps, warmup))


# name -> (factory(optimizer, cfg, optimizer steps per epoch), stepped after every batch?)
SCHEDULERS: dict[str, tuple[Callable[..., Any], bool]] = {
    "none": (lambda optimizer, cfg, steps: None, False),
    "step": (
        lambda optimizer, cfg, steps: torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=cfg.step_size, gamma=cfg.gamma
        ),
        False,
    ),
    "cosine": (_cosine, True),
    "plateau": (
        lambda optimizer, cfg, steps: torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=cfg.gamma, patience=cfg.plateau_patience
        ),
        False,
    ),
}

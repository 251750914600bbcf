"""Optimizers and learning-rate schedules: the registries of `train.optimizer` and
`train.scheduler`, each name with its factory."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from cxr.core.config import TrainConfig
from cxr.core.registry import Registry

# name -> factory(parameters, cfg, lr)
OptimizerFactory = Callable[
    [Iterable[torch.nn.Parameter], TrainConfig, float], torch.optim.Optimizer
]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", "train.optimizer")
OPTIMIZERS.register(
    "adam",
    lambda params, cfg, lr: torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay),
)
OPTIMIZERS.register(
    "adamw",
    lambda params, cfg, lr: torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay),
)
OPTIMIZERS.register(
    "sgd",
    lambda params, cfg, lr: torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    ),
)


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: its factory, and whether it steps after every batch (else
    after every epoch)."""

    # factory(optimizer, cfg, optimizer steps per epoch) -> an lr scheduler, or None
    build: Callable[[torch.optim.Optimizer, TrainConfig, int], Any]
    per_batch: bool = False


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


SCHEDULERS: Registry[Schedule] = Registry("scheduler", "train.scheduler")
SCHEDULERS.register("none", Schedule(lambda optimizer, cfg, steps: None))
SCHEDULERS.register(
    "step",
    Schedule(
        lambda optimizer, cfg, steps: torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=cfg.step_size, gamma=cfg.gamma
        )
    ),
)
SCHEDULERS.register("cosine", Schedule(_cosine, per_batch=True))
SCHEDULERS.register(
    "plateau",
    Schedule(
        lambda optimizer, cfg, steps: torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=cfg.gamma, patience=cfg.plateau_patience
        )
    ),
)

"""Where and how training runs: the device and the random seeds."""

from __future__ import annotations

import os

import numpy as np
import torch

from cxr.core.errors import ConfigError


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

"""Training batches from a pixel store: the epoch's order, gathering, on-device jitter.

`EpochSampler` decides each epoch's order (a function of seed and epoch alone, which is what
makes resuming exact); `batch_loader` gathers its batches in DataLoader workers, `DeviceBatches`
on a GPU that holds the whole store. `BatchAugment` jitters whole batches of tensors on the
training device, with per-sample parameters drawn from a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from cxr.training.pixels import PixelSet

if TYPE_CHECKING:
    from cxr.core.config import BatchAugmentConfig


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 (absent classes get weight 0)."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = torch.where(
        counts > 0, counts.sum() / (num_classes * counts), torch.zeros_like(counts)
    )
    return weights.float()


def group_balanced_weights(labels: torch.Tensor, groups: Sequence[str]) -> torch.Tensor:
    """Per-image draw probabilities (summing to 1): every class present equally likely and,
    within a class, every group (e.g. hospital) equally likely, whatever their image counts.

    Reweighting groups to equal size is the simple baseline that matches worst-group methods
    on spurious-correlation benchmarks (Idrissi et al., "Simple data balancing achieves
    competitive worst-group-accuracy", CLeaR 2022)."""
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} images")
    group_codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1]
    label_codes = labels.numpy()
    cells = label_codes * (int(group_codes.max(initial=0)) + 1) + group_codes
    _, cell_of, cell_counts = np.unique(cells, return_inverse=True, return_counts=True)
    class_of_cell = label_codes[np.unique(cell_of, return_index=True)[1]]
    groups_in_class = np.bincount(class_of_cell)  # cells (groups) within each class
    classes_present = np.count_nonzero(groups_in_class)
    weights = 1.0 / (classes_present * groups_in_class[label_codes] * cell_counts[cell_of])
    return torch.from_numpy(weights)


class EpochSampler(DistributedSampler):
    """DistributedSampler that can also draw with replacement by per-sample weights.

    The order of epoch `e` depends only on (seed, e), which is what makes resuming exact: the
    sampler's whole state is its epoch (`set_epoch`). Without weights it is torch's
    DistributedSampler (a seeded permutation, padded so every rank gets as many indices); with
    weights it is WeightedRandomSampler's draw, sharded the same way. Single-process training
    is the case num_replicas=1, rank=0.
    """

    def __init__(
        self,
        size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, seed=seed)
        self.weights = weights

    def __iter__(self) -> Iterator[int]:
        if self.weights is None:
            return super().__iter__()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, True, generator=generator)
        return iter(drawn[self.rank : self.total_size : self.num_replicas].tolist())


class BatchGather(Dataset):
    """Whole batches gathered from a PixelSet by a list of indices (one call per batch)."""

    def __init__(self, data: PixelSet) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(index)
        return self.data.pixels[rows], self.data.labels[rows]


def batch_loader(
    data: PixelSet,
    sampler: EpochSampler,
    batch_size: int,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """Batches of uint8 pixels and labels: gathered in workers, pinned for async copies."""
    return DataLoader(
        BatchGather(data),
        sampler=BatchSampler(sampler, batch_size, drop_last=False),
        batch_size=None,  # the sampler already yields whole batches
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


class DeviceBatches:
    """Batches gathered on the GPU from a store held in GPU memory: no workers, no pinned
    copies, no per-batch host-to-device transfer (the epoch's order goes over once).

    A GPU trains resnet18 at 224 px at ~10,000 images/s; a DataLoader round trip per batch is
    then a visible share of each step. A 21,000-image store at 224 px is ~1 GB of uint8.
    """

    def __init__(
        self, data: PixelSet, sampler: EpochSampler, batch_size: int, device: torch.device
    ) -> None:
        self.pixels = data.pixels.to(device)
        self.labels = data.labels.to(device)
        self.sampler = sampler
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(list(self.sampler), dtype=torch.int64).to(self.pixels.device)
        for rows in order.split(self.batch_size):
            yield self.pixels[rows], self.labels[rows]


def fits_on_device(data: PixelSet, device: torch.device, share: float = 0.25) -> bool:
    """Whether the uint8 store takes at most `share` of the GPU's memory (never on CPU/MPS,
    where the DataLoader's workers overlap gathering with compute)."""
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return data.pixels.numel() * data.pixels.element_size() <= share * total


@dataclass(frozen=True)
class BatchAugment:
    """Light, per-sample geometric and intensity jitter applied to a batch on its device
    (strengths from params.yaml `train.batch_augment`)."""

    max_rotation_deg: float
    max_shift: float  # fraction of the image side
    scale_range: tuple[float, float]
    intensity_jitter: float  # brightness and contrast, as a fraction

    @classmethod
    def from_config(
        cls, cfg: BatchAugmentConfig
    ) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
        """The configured jitter, or the identity when `enabled` is off."""
        if not cfg.enabled:
            return lambda pixels, generator: pixels
        return cls(cfg.rotation_deg, cfg.shift, tuple(cfg.scale), cfg.intensity)

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (N, 1, H, W) → float in [0, 1], same shape."""
        n = pixels.shape[0]

        device = pixels.device

        # Draws come from a generator on the batch's device: host-side draws would need a
        # synchronous host-to-device copy per batch, which stalls a GPU's queue every step.
        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, generator=generator, device=generator.device) * (high - low) + low

        angle = uniform(-self.max_rotation_deg, self.max_rotation_deg) * math.pi / 180
        scale = uniform(*self.scale_range)
        shift = torch.stack([uniform(-self.max_shift, self.max_shift) * 2 for _ in range(2)], 1)
        brightness = uniform(-self.intensity_jitter, self.intensity_jitter)
        contrast = uniform(1 - self.intensity_jitter, 1 + self.intensity_jitter)

        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        images = pixels.float().div_(255.0)
        grid = F.affine_grid(theta.to(device), list(images.shape), align_corners=False)
        images = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * contrast.view(-1, 1, 1, 1).to(device) + mean
        return (images + brightness.view(-1, 1, 1, 1).to(device)).clamp_(0.0, 1.0)

"""Fine-tuning: the regimes, the epoch loop, validation, early stopping, resume and DDP.

`fit` trains on a PixelSet, validates after each epoch, keeps the weights of the epoch chosen
by `train.select_by` (the model that evaluate uses) and reports every epoch to a callback, so
the stage can write the history and log it to MLflow as it goes. The run's state is saved
after every epoch and resumed from (`cxr.training.state`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

from cxr.core.config import TrainConfig
from cxr.core.errors import ConfigError
from cxr.core.progress import progress
from cxr.core.registry import Registry
from cxr.training.distributed import World, all_sum, average_buffers
from cxr.training.inference import Normalize, predict_logits
from cxr.training.loader import (
    BatchAugment,
    DeviceBatches,
    EpochSampler,
    batch_loader,
    class_weights,
    fits_on_device,
    group_balanced_weights,
)
from cxr.training.models import MODELS
from cxr.training.optim import OPTIMIZERS, SCHEDULERS
from cxr.training.pixels import PixelSet
from cxr.training.scores import balanced_accuracy, macro_f1
from cxr.training.state import (
    SELECTION,
    EpochStats,
    FitResult,
    TrainState,
    load_state,
    save_state,
)

# train.finetune -> whether the backbone trains in a (1-based) epoch
REGIMES: Registry[Callable[[TrainConfig, int], bool]] = Registry(
    "fine-tuning regime", "train.finetune"
)
REGIMES.register("full", lambda cfg, epoch: True)
REGIMES.register("head", lambda cfg, epoch: False)
REGIMES.register("unfreeze", lambda cfg, epoch: epoch > cfg.unfreeze_after)
# the last train.top_blocks stages and the head train on their cached input; the stages
# before them never run in the loop, so they get no gradients and stay as they are
REGIMES.register("top", lambda cfg, epoch: True)


def set_backbone_trainable(model: nn.Module, arch: str, trainable: bool) -> None:
    """Freeze or thaw every parameter outside the classifier head."""
    head = {id(p) for p in model.get_submodule(MODELS[arch].head).parameters()}
    for parameter in model.parameters():
        if id(parameter) not in head:
            parameter.requires_grad_(trainable)


def freeze_batchnorm_stats(model: nn.Module, arch: str) -> None:
    """A frozen backbone must not drift through BatchNorm running statistics either."""
    head = model.get_submodule(MODELS[arch].head)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module is not head:
            module.eval()


def loss_function(cfg: TrainConfig, labels: torch.Tensor, num_classes: int) -> nn.Module:
    weight = class_weights(labels, num_classes) if cfg.imbalance == "weighted_loss" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def sample_weights(
    cfg: TrainConfig,
    labels: torch.Tensor,
    num_classes: int,
    groups: Sequence[str] | None = None,
) -> torch.Tensor | None:
    """Per-image draw weights for imbalance=sampler: every class equally likely, and with
    train.balance_by every group (`groups`, one per image) within a class too."""
    if cfg.imbalance != "sampler":
        return None
    if cfg.balance_by:
        if groups is None:
            raise ValueError(f"train.balance_by: {cfg.balance_by} needs each image's group")
        return group_balanced_weights(labels, groups)
    return class_weights(labels, num_classes).double()[labels]


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None: full fp32) and whether fp16 needs a gradient scaler."""

    dtype: torch.dtype | None
    scaled: bool

    def autocast(self, device: torch.device) -> Any:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def precision_for(device: torch.device, amp: bool) -> Precision:
    """bf16 where the GPU supports it, else fp16 + GradScaler; CPU/MPS train in fp32."""
    if not amp or device.type != "cuda":
        return Precision(None, False)
    if torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


@dataclass
class Trainer:
    """The pieces of one training run, wired by `make_trainer`."""

    core: nn.Module  # the plain model: state dicts, head/backbone lookups
    runner: nn.Module  # what is called in the loop: maybe compiled, maybe DDP-wrapped, or the
    # head alone when it trains on cached backbone features
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_batch_schedule: bool  # scheduler stepped after every optimizer step
    scaler: torch.amp.GradScaler
    precision: Precision
    loss_fn: nn.Module
    sampler: EpochSampler
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]]  # DataLoader, or DeviceBatches
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    normalize: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    cfg: TrainConfig
    world: World
    val_features: torch.Tensor | None = None  # cached-feature head training: the val split's
    cached: nn.Module | None = None  # what trains on the cached features (head, or top stages)
    ema: AveragedModel | None = None  # train.ema_decay: the moving average of the weights
    mixup: v2.MixUp | None = None  # train.mixup_alpha: blends each batch and its labels

    @property
    def kept(self) -> nn.Module:
        """The model that is validated and whose weights an epoch offers to keep: the moving
        average under train.ema_decay, else the trained weights themselves."""
        return self.core if self.ema is None else self.ema.module


def caches_features(cfg: TrainConfig) -> bool:
    """Head-only (or top-stages) training with no random augmentation sees the same output of
    the frozen part for an image every epoch: compute it once and train the rest on it (same
    updates, far faster epochs). Dropout inside the frozen part is off (eval mode), as in the
    loop."""
    return cfg.finetune in ("head", "top") and not cfg.batch_augment.enabled


def cached_part(model: nn.Module, cfg: TrainConfig) -> tuple[str, nn.Module]:
    """Under feature caching: the module whose input is cached, and what trains on it (the
    head; under `top`, the last stages through the head)."""
    spec = MODELS[cfg.model]
    if cfg.finetune == "top":
        try:
            path = spec.tail_input(model, cfg.top_blocks)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        assert spec.tail is not None  # tail_input refused architectures without one
        return path, spec.tail(model, cfg.top_blocks)
    return spec.head, model.get_submodule(spec.head)


@torch.no_grad()
def module_inputs(
    model: nn.Module,
    arch: str,
    path: str,
    pixels: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """What the module at `path` receives for each image (model in eval mode), on the CPU."""
    module = model.get_submodule(path)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].float().cpu())
    )
    try:
        predict_logits(model, arch, pixels, batch_size, device)
    finally:
        handle.remove()
    return torch.cat(captured)


def head_inputs(
    model: nn.Module, arch: str, pixels: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """What the classifier head receives for each image (backbone in eval mode), on the CPU."""
    return module_inputs(model, arch, MODELS[arch].head, pixels, batch_size, device)


def _identity_augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return pixels


def make_trainer(
    model: nn.Module,
    train: PixelSet,
    val: PixelSet,
    cfg: TrainConfig,
    lr: float,
    device: torch.device,
    world: World,
    feature_cache: bool | None = None,
    groups: Sequence[str] | None = None,
) -> Trainer:
    """Wire a training run; `feature_cache` None decides by `caches_features`; `groups`: each
    training image's value of train.balance_by."""
    num_classes = len(train.classes)
    model.to(device=device, memory_format=memory_format(cfg))
    weights = sample_weights(cfg, train.labels, num_classes, groups)
    sampler = EpochSampler(len(train), world.size, world.rank, cfg.seed, weights)
    val_features = None
    cached = None
    if caches_features(cfg) if feature_cache is None else feature_cache:
        path, cached = cached_part(model, cfg)
        features = module_inputs(model, cfg.model, path, train.pixels, cfg.batch_size, device)
        val_features = module_inputs(model, cfg.model, path, val.pixels, cfg.batch_size, device)
        store = PixelSet(train.classes, train.files, features, train.labels, train.key)
        runner: nn.Module = cached
        loader: Iterable = DeviceBatches(store, sampler, cfg.batch_size, device)
        augment: Callable = _identity_augment
        normalize: Callable = nn.Identity()
    else:
        runner = torch.compile(model) if cfg.compile else model
        loader = train_batches(train, sampler, cfg, device)
        augment = BatchAugment.from_config(cfg.batch_augment)
        normalize = Normalize(cfg.model).to(device)
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        # a frozen backbone leaves most parameters without gradients
        runner = DistributedDataParallel(
            runner, device_ids=ids, find_unused_parameters=cfg.finetune != "full"
        )
    optimizer = OPTIMIZERS[cfg.optimizer](model.parameters(), cfg, lr)
    ema = None
    if cfg.ema_decay:
        # buffers too: the trained stages' BatchNorm statistics are averaged with their weights
        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
    # its Beta draws come from torch's global generator, seeded every epoch (train_one_epoch)
    mixup = v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes) if cfg.mixup_alpha else None
    precision = precision_for(device, cfg.amp)
    schedule = SCHEDULERS[cfg.scheduler]
    steps = math.ceil(len(sampler) / cfg.batch_size)  # optimizer steps per epoch
    return Trainer(
        core=model,
        runner=runner,
        optimizer=optimizer,
        scheduler=schedule.build(optimizer, cfg, steps),
        per_batch_schedule=schedule.per_batch,
        scaler=torch.amp.GradScaler(device.type, enabled=precision.scaled),
        precision=precision,
        loss_fn=loss_function(cfg, train.labels, num_classes).to(device),
        sampler=sampler,
        loader=loader,
        augment=augment,
        normalize=normalize,
        device=device,
        cfg=cfg,
        world=world,
        val_features=val_features,
        cached=cached,
        ema=ema,
        mixup=mixup,
    )


def train_batches(
    train: PixelSet, sampler: EpochSampler, cfg: TrainConfig, device: torch.device
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches gathered on the GPU from a GPU-resident store when allowed and it fits, else by
    DataLoader workers (pinned memory on CUDA)."""
    if cfg.gpu_store and fits_on_device(train, device):
        return DeviceBatches(train, sampler, cfg.batch_size, device)
    return batch_loader(
        train, sampler, cfg.batch_size, cfg.num_workers, pin_memory=device.type == "cuda"
    )


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def _to_layout(inputs: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return inputs.contiguous(memory_format=memory_format(cfg)) if inputs.dim() == 4 else inputs


def mix(mixup: v2.MixUp, inputs: torch.Tensor, labels: torch.Tensor) -> Any:
    """The batch and its one-hot labels blended by `mixup`. torchvision mixes batches of
    images only, so a batch of vectors (the head's cached input) passes as 1x1 images."""
    if inputs.dim() != 2:
        return mixup(inputs, labels)
    mixed, targets = mixup(inputs[:, :, None, None], labels)
    return mixed.flatten(1), targets


def train_one_epoch(trainer: Trainer, epoch: int) -> tuple[float, float, float, float]:
    """One pass over this rank's shard: loss and accuracy (reduced over all ranks), images/s
    and the lr of the last optimizer step."""
    t, cfg = trainer, trainer.cfg
    backbone_trains = REGIMES[cfg.finetune](cfg, epoch)
    set_backbone_trainable(t.core, cfg.model, backbone_trains)
    t.runner.train()
    if not backbone_trains:
        freeze_batchnorm_stats(t.core, cfg.model)
    t.sampler.set_epoch(epoch)
    seed = epoch_seed(cfg.seed, epoch, t.world.rank)
    torch.manual_seed(seed)  # dropout masks and mixup's weights
    generator = torch.Generator(t.device).manual_seed(seed)  # augmentation draws, on device
    total_loss = torch.zeros((), device=t.device)
    correct = torch.zeros((), device=t.device, dtype=torch.int64)
    seen = 0
    lr = t.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    batches: Iterable = t.loader
    if t.world.is_writer:  # a bar (terminal) or a line every few seconds (logs)
        total = -(-len(t.sampler) // cfg.batch_size)
        batches = progress(t.loader, f"epoch {epoch}/{cfg.epochs}", total, "batches")
    for pixels_cpu, labels_cpu in batches:
        if len(labels_cpu) < 2:  # BatchNorm cannot train on a single image
            continue
        pixels = pixels_cpu.to(t.device, non_blocking=True)
        labels = labels_cpu.to(t.device, non_blocking=True)
        inputs = t.normalize(t.augment(pixels, generator))
        targets = labels
        if t.mixup is not None:  # soft targets; the accuracy below counts each image's own label
            inputs, targets = mix(t.mixup, inputs, labels)
        inputs = _to_layout(inputs, cfg)
        t.optimizer.zero_grad(set_to_none=True)
        with t.precision.autocast(t.device):
            logits = t.runner(inputs)
        loss = t.loss_fn(logits.float(), targets)
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        lr = t.optimizer.param_groups[0]["lr"]
        if t.per_batch_schedule:
            t.scheduler.step()
        if t.ema is not None:
            t.ema.update_parameters(t.core)
        # sums stay on the device: an .item() per batch would stall a GPU's queue
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    average_buffers(t.core)
    if t.ema is not None:  # each rank averaged its own BatchNorm statistics
        average_buffers(t.ema.module)
    sums = all_sum([float(total_loss), float(correct), float(seen)], t.device)
    check_epoch_trained(epoch, sums[2], sums[0], cfg, t.optimizer.param_groups[0]["lr"], t.world)
    seconds = time.perf_counter() - start
    speed = sums[2] / max(seconds, 1e-9)
    return sums[0] / max(sums[2], 1), sums[1] / max(sums[2], 1), speed, lr


def check_epoch_trained(
    epoch: int,
    images: float,
    loss: float,
    cfg: TrainConfig,
    lr: float,
    world: World,
    what: str = "training loss",
) -> None:
    """Stop instead of saving a model that did not train: an epoch that saw no image (every
    batch was a single image, skipped) or whose loss is no longer a finite number."""
    if images == 0:
        raise ConfigError(
            f"train: epoch {epoch} trained on no images: every batch held a single image, "
            "which BatchNorm cannot train on, so all were skipped. Check that "
            f"data/augmented/train holds images for each of the {world.size} process(es) and "
            f"that train.batch_size ({cfg.batch_size}) is at least 2."
        )
    if not math.isfinite(loss):
        raise ConfigError(
            f"train: epoch {epoch}: the {what} became {loss} (not finite), so the "
            f"weights are lost. Lower lr (now {lr:g}); check train.optimizer "
            f"({cfg.optimizer}), train.weight_decay ({cfg.weight_decay:g}) and, on a GPU, "
            f"train.amp ({cfg.amp})."
        )


def validate(trainer: Trainer, val: PixelSet) -> tuple[float, float, float, float]:
    """Validation loss, accuracy, balanced accuracy and macro-F1 of `trainer.kept`. Every rank
    scores the whole split, so all ranks agree on early stopping and the best epoch without
    communicating."""
    cfg = trainer.cfg
    with trainer.precision.autocast(trainer.device):
        if trainer.val_features is not None and trainer.cached is not None:
            part = trainer.cached if trainer.ema is None else cached_part(trainer.kept, cfg)[1]
            part.eval()
            with torch.no_grad():
                logits = torch.cat(
                    [
                        part(chunk.to(trainer.device)).float().cpu()
                        for chunk in trainer.val_features.split(cfg.batch_size)
                    ]
                )
        else:
            logits = predict_logits(
                trainer.kept, cfg.model, val.pixels, cfg.batch_size, trainer.device
            )
    predicted, truth = logits.argmax(1).numpy(), val.labels.numpy()
    f1 = macro_f1(truth, predicted, len(val.classes))
    balanced = balanced_accuracy(truth, predicted)
    loss = float(nn.functional.cross_entropy(logits, val.labels))
    return loss, float((predicted == truth).mean()), float(balanced), float(f1)


def _snapshot(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CPU copy that later training steps cannot change (one copy, from any device)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module_state.items()}


def _restore(trainer: Trainer, state: TrainState) -> None:
    trainer.core.load_state_dict(state.model)
    trainer.optimizer.load_state_dict(state.optimizer)
    if trainer.scheduler is not None and state.scheduler:
        trainer.scheduler.load_state_dict(state.scheduler)
    if state.scaler:
        trainer.scaler.load_state_dict(state.scaler)
    if trainer.ema is not None:
        trainer.ema.load_state_dict(state.ema)


def _record(trainer: Trainer, state: TrainState, stats: EpochStats) -> None:
    """Fold a finished epoch into the state: best weights, early stopping, resumable parts."""
    cfg = trainer.cfg
    state.epoch = stats.epoch
    state.history.append(stats)
    state.model = _snapshot(trainer.core.state_dict())
    offered = state.model  # the weights `stats` scored
    if trainer.ema is not None:
        state.ema = _snapshot(trainer.ema.state_dict())
        # the averaged model's own weights, shared with state.ema (its keys under "module.")
        offered = {k.removeprefix("module."): v for k, v in state.ema.items() if k != "n_averaged"}
    score = SELECTION[cfg.select_by]
    if not state.best_epoch or score(stats) > score(state.history[state.best_epoch - 1]):
        # shared, not copied again: a later epoch replaces these snapshots, never mutates them
        state.best_epoch = stats.epoch
        state.best_state = offered
    patience = cfg.early_stopping_patience
    state.stopped = bool(patience) and stats.epoch - state.best_epoch >= patience
    state.optimizer = trainer.optimizer.state_dict()
    state.scheduler = trainer.scheduler.state_dict() if trainer.scheduler is not None else {}
    state.scaler = trainer.scaler.state_dict() if trainer.precision.scaled else {}
    # the sampler's order is a function of (seed, epoch): this is its whole state
    state.sampler = {"seed": cfg.seed, "next_epoch": stats.epoch + 1}


def fit(
    model: nn.Module,
    train: PixelSet,
    val: PixelSet,
    cfg: TrainConfig,
    lr: float,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
    checkpoint: Path | None = None,
    key: str = "",
    world: World | None = None,
    feature_cache: bool | None = None,
    groups: Sequence[str] | None = None,
) -> FitResult:
    """Train for cfg.epochs (or until early stopping); keep the weights of the best epoch by
    `train.select_by`. Under train.ema_decay the epochs' val scores, and the weights kept, are
    those of the moving average; the training loss and accuracy are the trained weights'.

    With `checkpoint`, the state is saved there after every epoch (by rank 0 only) and a
    state saved under the same `key` is resumed from. `groups`: each training image's value of
    train.balance_by (needed when it is set).
    """
    world = world or World()
    trainer = make_trainer(model, train, val, cfg, lr, device, world, feature_cache, groups)
    state = load_state(checkpoint, key)
    resumed_from = state.epoch
    if resumed_from:
        _restore(trainer, state)
        print(f"train: resuming after epoch {resumed_from} from {checkpoint}")
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.stopped:
            break
        train_loss, train_acc, speed, lr_now = train_one_epoch(trainer, epoch)
        val_loss, val_acc, val_bal, val_f1 = validate(trainer, val)
        if not math.isfinite(val_loss):  # finite training loss, but the weights blew up
            check_epoch_trained(epoch, 1, val_loss, cfg, lr_now, world, "validation loss")
        stats = EpochStats(
            epoch, train_loss, train_acc, val_loss, val_acc, val_bal, val_f1, lr_now, speed
        )
        step_epoch_scheduler(trainer, val_loss)
        _record(trainer, state, stats)
        if checkpoint is not None and world.is_writer:
            save_state(checkpoint, state)
        on_epoch(stats)
    return FitResult(state.history, state.best_epoch, state.best_state, resumed_from)


def step_epoch_scheduler(trainer: Trainer, val_loss: float) -> None:
    """End-of-epoch scheduler step (per-batch schedules were stepped in the loop)."""
    scheduler = trainer.scheduler
    if scheduler is None or trainer.per_batch_schedule:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()

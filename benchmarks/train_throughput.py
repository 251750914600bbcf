"""Training throughput: our data path against its ceiling and against the seed projects' path.

Prints, in one run, on the same model, batch size, image size and worker count:
  (a) model-only steps on random tensors already on the device (the ceiling);
  (b) our end-to-end training from the cached uint8 pixel store (cxr.training.loop.train_one_epoch:
      batches gathered from a GPU-resident copy of the store when it fits, else by DataLoader
      workers over the memory-mapped store; batch augmentation on the device, channels_last,
      AMP on CUDA);
  (c) the seed style: torchvision ImageFolder + PIL transforms decoded per sample every epoch;
and the ratios b/a and b/c.

    python benchmarks/train_throughput.py --data data/augmented/train            # params.yaml size
    python benchmarks/train_throughput.py --data data/augmented/train --image-size 224 --device cuda
    ... --device cuda --no-gpu-store   # (b) through DataLoader workers, to compare the two feeds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

from cxr.core.config import TrainConfig, load_params
from cxr.training.distributed import World
from cxr.training.loader import DeviceBatches
from cxr.training.loop import make_trainer, memory_format, precision_for, train_one_epoch
from cxr.training.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from cxr.training.pixels import cached_split
from cxr.training.runtime import configure, select_device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(
    cfg: TrainConfig, device: torch.device, classes: int, steps: int
) -> Callable[[], float]:
    """(a) images/s of forward+backward+step on device-resident random batches."""
    model = build_model(cfg.model, classes).to(device=device, memory_format=memory_format(cfg))
    model = torch.compile(model) if cfg.compile else model
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    precision = precision_for(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
    size = cfg.image_size
    inputs = torch.randn(cfg.batch_size, 3, size, size, device=device)
    inputs = inputs.contiguous(memory_format=memory_format(cfg))
    labels = torch.randint(0, classes, (cfg.batch_size,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(device):
            logits = model(inputs)
        scaler.scale(loss_fn(logits.float(), labels)).backward()
        scaler.step(optimizer)
        scaler.update()

    def measure() -> float:
        step()  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return steps * cfg.batch_size / (time.perf_counter() - start)

    return measure


def ours(
    cfg: TrainConfig, device: torch.device, data: Path
) -> tuple[Callable[[], float], float, str]:
    """(b) images/s of one training epoch from the pixel store, the one-off seconds it took to
    build the store, and how batches reach the model."""
    start = time.perf_counter()
    train = cached_split(data, cfg.image_size)
    built = time.perf_counter() - start
    model = build_model(cfg.model, len(train.classes))
    trainer = make_trainer(model, train, train, cfg, 1e-4, device, World())
    train_one_epoch(trainer, 0)  # warm-up: worker start, allocator, cuDNN autotuning
    epochs = iter(range(1, 1_000_000))
    feed = (
        "GPU-resident store"
        if isinstance(trainer.loader, DeviceBatches)
        else f"DataLoader, {cfg.num_workers} workers"
    )
    return lambda: train_one_epoch(trainer, next(epochs))[2], built, feed


def seed_style(cfg: TrainConfig, device: torch.device, data: Path) -> Callable[[], float]:
    """(c) images/s of the seed projects' loop: ImageFolder + PIL transforms per sample."""
    size = cfg.image_size
    pipeline = transforms.Compose(
        [
            transforms.Grayscale(num_output_channels=3),
            transforms.Resize((size, size)),
            transforms.RandomRotation(10),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(str(data), transform=pipeline)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    model = build_model(cfg.model, len(dataset.classes)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> float:
        seen, start = 0, time.perf_counter()
        for inputs, labels in loader:
            if len(labels) < 2:
                continue
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), labels)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        synchronize(device)
        return seen / (time.perf_counter() - start)

    epoch()  # warm-up, like (b)
    return epoch


def parse_args() -> argparse.Namespace:
    defaults = load_params().train if Path("params.yaml").is_file() else TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/augmented/train"))
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--workers", type=int, default=defaults.num_workers)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved a-b-c rounds; medians are reported"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps for (a) per round")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--no-gpu-store",
        action="store_true",
        help="CUDA: feed (b) through DataLoader workers even when the store fits on the GPU",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: train.threads' default)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: no such folder of <Class>/<image> files")
    cfg = TrainConfig(
        model=args.model,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        compile=args.compile,
        gpu_store=not args.no_gpu_store,
    )
    if args.threads:  # on a shared, oversubscribed CPU one thread avoids OpenMP barrier stalls
        cfg = dataclasses.replace(cfg, threads=args.threads)
    device = select_device(cfg.device)
    configure(cfg, device)  # the train stage's threads and kernel settings
    os.environ.setdefault("CXR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "cxr-bench-cache"))
    classes = sum(1 for p in args.data.iterdir() if p.is_dir())
    print(
        f"{cfg.model}, {cfg.image_size} px, batch {cfg.batch_size}, {cfg.num_workers} workers, "
        f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
        f"{torch.get_num_threads()} threads), data {args.data}"
    )
    measure_a = model_only(cfg, device, classes, args.steps)
    measure_b, built, feed = ours(cfg, device, args.data)
    measure_c = seed_style(cfg, device, args.data)
    # Interleaved rounds: load from other processes hits all three alike.
    rounds = [(measure_a(), measure_b(), measure_c()) for _ in range(args.rounds)]
    for number, (a, b, c) in enumerate(rounds, 1):
        print(f"round {number}: a {a:8.1f}  b {b:8.1f}  c {c:8.1f} images/s")
    a, b, c = (statistics.median(column) for column in zip(*rounds, strict=True))
    print(f"(a) model-only step on device tensors: {a:9.1f} images/s (median)")
    print(
        f"(b) ours, cached uint8 store:          {b:9.1f} images/s ({feed}; "
        f"store built in {built:.1f} s)"
    )
    print(f"(c) seed style, ImageFolder + PIL:     {c:9.1f} images/s")
    print(f"b/a = {b / a:.3f}   b/c = {b / c:.2f}")


if __name__ == "__main__":
    main()

"""The CUDA paths: the train stage on a GPU (AMP, channels_last, GPU-resident store), the
GPU store's batches against the DataLoader's, and torchrun with more ranks than GPUs.

Marked `cuda`: collected only where torch sees a GPU (conftest deselects them elsewhere and
says so), so CI machines without one neither run nor skip them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from cxr.training.loader import DeviceBatches, EpochSampler, batch_loader, fits_on_device
from cxr.training.pixels import PixelSet
from tests.helpers.train_project import PROJECT, make_project, run_train, stage_env

pytestmark = pytest.mark.cuda
GPU = torch.device("cuda")


def test_train_stage_on_cuda_with_amp_and_gpu_store(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "p", per_class=16, epochs=2, device="cuda", amp=True, gpu_store=True
    )
    log = run_train(root)
    assert "on cuda" in log, log
    metrics = json.loads((root / "metrics/train.json").read_text())
    assert all(v == v for v in metrics.values() if isinstance(v, float))  # no NaN
    assert metrics["val_balanced_accuracy"] > 0.5  # the bands of train_project are easy to learn


def test_gpu_store_batches_equal_dataloader_batches() -> None:
    pixels = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(37) % 3
    data = PixelSet(("a", "b", "c"), tuple(Path(f"{i}.png") for i in range(37)), pixels, labels)
    sampler = EpochSampler(len(data), seed=5)
    assert fits_on_device(data, GPU)
    resident = DeviceBatches(data, sampler, 8, GPU)
    workers = batch_loader(data, sampler, 8, workers=2, pin_memory=True)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        for (p1, l1), (p2, l2) in zip(resident, workers, strict=True):
            assert p1.device.type == "cuda"
            assert torch.equal(p1.cpu(), p2) and torch.equal(l1.cpu(), l2)


def test_more_ranks_than_gpus_fails_with_a_clear_error(tmp_path: Path) -> None:
    import subprocess

    root = make_project(tmp_path / "p", per_class=4, epochs=1, device="cuda")
    ranks = torch.cuda.device_count() + 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(ranks), str(PROJECT / "stages/train.py")]
    done = subprocess.run(cmd, cwd=root, env=stage_env(root), capture_output=True, text=True)
    assert done.returncode != 0
    assert "more processes on this machine than it has GPUs" in done.stderr + done.stdout

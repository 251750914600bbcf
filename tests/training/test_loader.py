"""The decoded-pixel store and the samplers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.training import cache
from cxr.training.loader import (
    DeviceBatches,
    EpochSampler,
    batch_loader,
    class_weights,
    fits_on_device,
    group_balanced_weights,
)
from cxr.training.pixels import PixelSet, cached_split, load_split
from tests.helpers.train_project import write_images


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_pixel_store_decodes_once_and_matches_direct_decoding(tmp_path, store_dir) -> None:
    write_images(tmp_path / "split", per_class=3, size=40, seed=0)
    first = cached_split(tmp_path / "split", 32)
    entry = store_dir / f"{first.key}.u8"
    assert entry.stat().st_size == len(first) * 32 * 32
    stamp = entry.stat().st_mtime_ns
    again = cached_split(tmp_path / "split", 32)
    assert again.key == first.key and entry.stat().st_mtime_ns == stamp  # read, not rebuilt
    direct = load_split(tmp_path / "split", 32)
    assert torch.equal(again.pixels, direct.pixels)
    assert torch.equal(again.labels, direct.labels)
    assert isinstance(again.pixels.numpy(), np.ndarray)


def test_pixel_store_key_follows_content_and_size(tmp_path, store_dir) -> None:
    write_images(tmp_path / "split", per_class=2, size=40, seed=0)
    base = cached_split(tmp_path / "split", 32).key
    assert cached_split(tmp_path / "split", 48).key != base
    changed = sorted((tmp_path / "split" / "Normal").glob("*.png"))[0]
    write_images(tmp_path / "other", per_class=2, size=40, seed=9)
    changed.write_bytes(sorted((tmp_path / "other" / "Normal").glob("*.png"))[0].read_bytes())
    assert cached_split(tmp_path / "split", 32).key != base


def test_truncated_store_entry_is_rebuilt(tmp_path, store_dir) -> None:
    write_images(tmp_path / "split", per_class=2, size=40, seed=0)
    key = cached_split(tmp_path / "split", 32).key
    entry = store_dir / f"{key}.u8"
    entry.write_bytes(entry.read_bytes()[:100])  # as if killed while writing
    assert cache.open_store(key) is None
    assert torch.equal(
        cached_split(tmp_path / "split", 32).pixels, load_split(tmp_path / "split", 32).pixels
    )


def test_epoch_sampler_shards_disjointly_and_repeats_per_epoch() -> None:
    shards = []
    for rank in range(2):
        sampler = EpochSampler(10, num_replicas=2, rank=rank, seed=3)
        sampler.set_epoch(1)
        shards.append(list(sampler))
        assert list(sampler) == shards[-1]  # a function of (seed, epoch) only
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(2)
    second = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != second


def test_weighted_sampler_balances_classes() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = class_weights(labels, 2).double()[labels]
    sampler = EpochSampler(len(labels), seed=0, weights=weights)
    drawn_indices = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn_indices += list(sampler)
    drawn = labels[torch.tensor(drawn_indices)]
    share = float((drawn == 1).double().mean())
    assert 0.45 < share < 0.55  # 2000 draws; unweighted it would be 0.1


def test_class_weights_are_inverse_frequency() -> None:
    weights = class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert weights[1] == pytest.approx(3 * weights[0])
    assert weights[2] == 0


def test_device_batches_match_the_dataloader_batches() -> None:
    """The GPU-resident path yields the same batches, in the same order, as the workers do."""
    pixels = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(37) % 3
    data = PixelSet(("a", "b", "c"), tuple(Path(f"{i}.png") for i in range(37)), pixels, labels)
    sampler = EpochSampler(len(data), seed=5)
    resident = DeviceBatches(data, sampler, 8, torch.device("cpu"))
    workers = batch_loader(data, sampler, 8, workers=2, pin_memory=False)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        ours, theirs = list(resident), list(workers)
        assert len(ours) == len(theirs) == 5
        for (p1, l1), (p2, l2) in zip(ours, theirs, strict=True):
            assert torch.equal(p1, p2) and torch.equal(l1, l2)
    assert not fits_on_device(data, torch.device("cpu"))  # CPU keeps the overlapping workers


def test_group_balanced_weights_give_every_class_and_every_group_within_it_equal_mass() -> None:
    # class 0: 60 images of hospital a, 4 of b; class 1: 30 of a; class 2: 5 of b, 1 of c
    labels = torch.tensor([0] * 64 + [1] * 30 + [2] * 6)
    groups = ["a"] * 60 + ["b"] * 4 + ["a"] * 30 + ["b"] * 5 + ["c"]
    weights = group_balanced_weights(labels, groups)
    assert weights.dtype == torch.float64 and float(weights.sum()) == pytest.approx(1.0)
    cells = pd.DataFrame({"label": labels.numpy(), "group": groups, "w": weights.numpy()})
    per_class = cells.groupby("label")["w"].sum()
    assert per_class.to_numpy() == pytest.approx([1 / 3] * 3)
    per_cell = cells.groupby(["label", "group"])["w"].sum()
    assert per_cell[(0, "a")] == pytest.approx(per_cell[(0, "b")]) == pytest.approx(1 / 6)
    assert per_cell[(2, "c")] == pytest.approx(1 / 6)  # one image weighs as much as five
    assert per_cell[(1, "a")] == pytest.approx(1 / 3)  # one group: the class's whole share
    within = cells.groupby(["label", "group"])["w"].nunique()
    assert (within == 1).all()  # images of one cell are equally likely


def test_group_balanced_draws_follow_the_groups_not_their_sizes() -> None:
    labels = torch.tensor([0] * 95 + [0] * 5 + [1] * 100)
    groups = ["big"] * 95 + ["small"] * 5 + ["big"] * 100
    sampler = EpochSampler(len(labels), seed=0, weights=group_balanced_weights(labels, groups))
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    small = float(np.isin(drawn, range(95, 100)).mean())
    assert 0.21 < small < 0.29  # 4000 draws, expected 0.25; by class weights alone 0.025


def test_group_balanced_weights_refuse_a_group_list_of_another_length() -> None:
    with pytest.raises(ValueError, match="3 groups for 2 images"):
        group_balanced_weights(torch.tensor([0, 1]), ["a", "b", "c"])

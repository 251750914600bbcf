"""The augment stage: oversampling from train only, deterministic for any worker count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.helpers.project import PROJECT, project_params, tree_hashes
from PIL import Image

from cxr.core.config import AugmentConfig, DataConfig, SplitConfig, parse_params
from cxr.data.augment import augment_train
from cxr.data.sources import fetch
from cxr.data.split import split_dataset, split_of_files


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    """A real download + split of an imbalanced two-class set (20 vs 8 images)."""
    source = tmp_path / "src"
    for c, (name, count) in enumerate({"Big": 20, "Small": 8}.items()):
        (source / name).mkdir(parents=True)
        for i in range(count):
            rng = np.random.default_rng(100 * c + i)
            pixels = rng.integers(0, 256, (40, 40), dtype=np.uint8)
            Image.fromarray(pixels).save(source / name / f"{name}{i:02d}.png")
    data = tmp_path / "data"
    data.mkdir()
    fetch(
        DataConfig(source=str(source)),
        tmp_path,
        data / "raw",
        data / "masks",
        data / "manifest.csv",
        data / "rejected.csv",
        data / "metadata.csv",
    )
    split_dataset(
        data / "raw",
        data / "manifest.csv",
        data / "metadata.csv",
        data / "split",
        SplitConfig(ratio=(0.6, 0.2, 0.2), seed=3, group_by=""),
    )
    return data / "split"


def project_ops() -> AugmentConfig:
    """The operations in the project's params.yaml (rotate, zoom, distortion, ...)."""
    return parse_params(project_params()).augment


def test_no_augmented_file_derives_from_val_or_test(split_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "augmented"
    metrics = augment_train(split_dir / "train", out, project_ops(), workers=1)
    manifest = pd.read_csv(out / "manifest.csv")
    extras = manifest[manifest["augmented"]]
    assert len(extras) == metrics["generated"] > 0
    where = split_of_files(split_dir)
    assert {where[source] for source in extras["source"]} == {"train"}
    # By content too: no held-out image's bytes are among the sources used.
    held_out = {
        digest for name, digest in tree_hashes(split_dir).items() if not name.startswith("train/")
    }
    train = tree_hashes(split_dir / "train")
    assert not {train[source] for source in extras["source"]} & held_out
    # Every output file is in the manifest and vice versa.
    assert set(tree_hashes(out / "train")) == set(manifest["file"])


def test_target_count_and_ratio(split_dir: Path, tmp_path: Path) -> None:
    ops = project_ops()
    big = len(list((split_dir / "train" / "Big").iterdir()))
    counted = AugmentConfig(target=big + 3, seed=ops.seed, operations=ops.operations)
    after = augment_train(split_dir / "train", tmp_path / "a", counted, workers=1)["after"]
    assert after == {"Big": big + 3, "Small": big + 3}
    half = AugmentConfig(target=0.5, seed=ops.seed, operations=ops.operations)
    small = len(list((split_dir / "train" / "Small").iterdir()))
    after = augment_train(split_dir / "train", tmp_path / "b", half, workers=1)["after"]
    assert after == {"Big": big, "Small": max(small, round(big * 0.5))}
    # above 1.0, every class grows, the largest too: more views of each image, not only balance
    grown = AugmentConfig(target=1.5, seed=ops.seed, operations=ops.operations)
    metrics = augment_train(split_dir / "train", tmp_path / "c", grown, workers=1)
    assert metrics["after"] == {"Big": round(big * 1.5), "Small": round(big * 1.5)}
    assert len(list((tmp_path / "c" / "train" / "Big").iterdir())) == round(big * 1.5)


def test_parallel_output_is_identical_to_serial(split_dir: Path, tmp_path: Path) -> None:
    ops = project_ops()
    augment_train(split_dir / "train", tmp_path / "serial", ops, workers=1)
    augment_train(split_dir / "train", tmp_path / "parallel", ops, workers=2)
    serial, parallel = tree_hashes(tmp_path / "serial"), tree_hashes(tmp_path / "parallel")
    assert serial == parallel
    assert any("__aug" in name for name in serial)

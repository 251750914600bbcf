"""The split stage: duplicate groups never straddle splits; fixed mode; per-split counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.core.config import DataConfig, SplitConfig
from cxr.data.sources import fetch
from cxr.data.split import SplitError, split_dataset, split_of_files


def noise(seed: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 240, (size, size), dtype=np.uint8)


def source_with_duplicates(folder: Path, per_class: int = 12) -> Path:
    """Two classes of distinct images, plus: an exact copy and a brightened (near) copy inside
    class A, and an exact copy of an A image filed under class B."""
    for c, name in enumerate(("A", "B")):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(noise(100 * c + i)).save(folder / name / f"{name}{i:02d}.png")
    base = noise(0)
    Image.fromarray(base).save(folder / "A" / "copy_of_A00.png")
    Image.fromarray(base + 3).save(folder / "A" / "brighter_A00.png")
    Image.fromarray(noise(1)).save(folder / "B" / "A01_filed_as_B.png")
    return folder


def ingest(source: Path, project: Path) -> Path:
    data = project / "data"
    data.mkdir(parents=True)
    fetch(
        DataConfig(source=str(source)),
        project,
        data / "raw",
        data / "masks",
        data / "manifest.csv",
        data / "rejected.csv",
        data / "metadata.csv",
    )
    return data


def assert_no_group_straddles(data: Path, split_dir: Path, max_distance: int | None) -> int:
    """Every duplicate group (recomputed here from the manifest) sits in a single split;
    return the number of multi-file groups checked."""
    from cxr.data.split import duplicate_groups

    manifest = pd.read_csv(data / "manifest.csv", keep_default_na=False, dtype={"phash": str})
    group_of, _ = duplicate_groups(manifest, max_distance)
    where = pd.Series(split_of_files(split_dir))
    frame = pd.DataFrame({"group": group_of, "split": where})
    assert frame["split"].notna().all()  # every ingested image landed somewhere
    per_group = frame.groupby("group")["split"].nunique()
    assert (per_group == 1).all(), per_group[per_group > 1]
    return int((frame.groupby("group").size() > 1).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicate_groups_stay_in_one_split(tmp_path: Path, seed: int) -> None:
    data = ingest(source_with_duplicates(tmp_path / "src"), tmp_path / "p")
    cfg = SplitConfig(ratio=(0.5, 0.25, 0.25), seed=seed, near_duplicate_distance=24, group_by="")
    metrics = split_dataset(
        data / "raw",
        data / "manifest.csv",
        data / "metadata.csv",
        data / "split",
        cfg,
        tmp_path / "dist.csv",
    )
    dup = metrics["duplicates"]
    # A00 + its copy + its brighter copy; A01 + its copy filed under B.
    assert dup["exact_groups"] == 2
    assert dup["groups"] == 2
    assert dup["near_groups"] == 1
    assert dup["files_in_groups"] == 5 and dup["files_merged"] == 3
    assert dup["cross_class_groups"] == 1
    assert assert_no_group_straddles(data, data / "split", 24) == 2
    dist = pd.read_csv(tmp_path / "dist.csv")
    assert dist["images"].sum() == sum(metrics["totals"].values()) == 27
    assert set(dist["split"]) == {"train", "val", "test"}


def test_near_duplicates_off_keeps_only_exact_groups(tmp_path: Path) -> None:
    data = ingest(source_with_duplicates(tmp_path / "src"), tmp_path / "p")
    cfg = SplitConfig(ratio=(0.5, 0.25, 0.25), near_duplicate_distance=None, group_by="")
    dup = split_dataset(
        data / "raw", data / "manifest.csv", data / "metadata.csv", data / "split", cfg
    )["duplicates"]
    assert dup["near_groups"] == 0 and dup["files_in_groups"] == 4


def test_fixed_mode_takes_that_many_per_class(tmp_path: Path) -> None:
    data = ingest(source_with_duplicates(tmp_path / "src"), tmp_path / "p")
    cfg = SplitConfig(mode="fixed", fixed=(3, 2), near_duplicate_distance=None, group_by="")
    first = split_dataset(
        data / "raw", data / "manifest.csv", data / "metadata.csv", data / "split", cfg
    )
    # B's cross-class copy may move; every other unit is one file in class B.
    assert first["splits"]["test"]["B"] >= 2 and first["splits"]["val"]["B"] >= 3
    assert first["totals"]["val"] + first["totals"]["test"] >= 10
    again = split_dataset(
        data / "raw", data / "manifest.csv", data / "metadata.csv", tmp_path / "again", cfg
    )
    assert again == first  # seeded: same params, same split
    assert split_of_files(tmp_path / "again") == split_of_files(data / "split")


def test_fixed_mode_with_too_few_images_names_the_key(tmp_path: Path) -> None:
    data = ingest(source_with_duplicates(tmp_path / "src"), tmp_path / "p")
    cfg = SplitConfig(mode="fixed", fixed=(60, 60), group_by="")
    with pytest.raises(SplitError, match=r"split\.fixed: class 'A' has 14 images; \[60, 60\]"):
        split_dataset(
            data / "raw", data / "manifest.csv", data / "metadata.csv", data / "split", cfg
        )
    assert not (data / "split").exists()


def test_real_sample_groups_never_span_splits(real_data: Path, tmp_path: Path) -> None:
    """cxr3 with its patient column: no patient and no duplicate group in two splits, and
    every class split close to the requested shares."""
    data = ingest(real_data, tmp_path / "p")
    cfg = SplitConfig(near_duplicate_distance=24, group_by="patient")
    metrics = split_dataset(
        data / "raw", data / "manifest.csv", data / "metadata.csv", data / "split", cfg
    )
    checked = assert_no_group_straddles(data, data / "split", 24)
    assert metrics["duplicates"]["groups"] == checked
    manifest = pd.read_csv(data / "manifest.csv")
    assert sum(metrics["totals"].values()) == len(manifest)
    # patients, read from the source's own manifest (not from our metadata copy)
    source = pd.read_csv(real_data / "manifest.csv", dtype=str, keep_default_na=False)
    patient_of = dict(zip(source["file"], source["patient"], strict=True))
    where = pd.Series(split_of_files(data / "split"))
    patients = manifest.assign(
        patient=[patient_of[s] for s in manifest["source"]],
        split=where.loc[manifest["file"]].to_numpy(),
    )
    per_patient = patients.groupby("patient")["split"].nunique()
    assert (per_patient == 1).all(), per_patient[per_patient > 1]
    groups = metrics["groups"]
    assert groups["patient_values"] == source["patient"].nunique() == 312
    assert groups["largest_unit"] >= patients.groupby("patient").size().max() == 7
    for name, count in manifest["class"].value_counts().items():
        for split, share in zip(("train", "val", "test"), cfg.ratio, strict=True):
            got = metrics["splits"][split][name] / count
            # whole patients move together: within 8 points of the share, or 3 images
            assert abs(got - share) <= max(0.08, 3 / count), (name, split, got, share)


def test_group_by_without_metadata_or_column_names_the_key(tmp_path: Path) -> None:
    data = ingest(source_with_duplicates(tmp_path / "src"), tmp_path / "p")
    args = (data / "raw", data / "manifest.csv", data / "metadata.csv", data / "split")
    with pytest.raises(SplitError, match=r"split.group_by: 'patient', but the source has no"):
        split_dataset(*args, SplitConfig(group_by="patient"))
    metadata = pd.read_csv(data / "metadata.csv")
    metadata.assign(site="x").to_csv(data / "metadata.csv", index=False)
    with pytest.raises(SplitError, match=r"no column 'patient'.*\['site'\]"):
        split_dataset(*args, SplitConfig(group_by="patient"))
    assert not (data / "split").exists()


def test_patient_groups_merge_with_duplicate_groups(tmp_path: Path) -> None:
    """Images of one patient, and a patient's image duplicated under another patient, all
    land in one split together."""
    data = ingest(source_with_duplicates(tmp_path / "src"), tmp_path / "p")
    metadata = pd.read_csv(data / "metadata.csv")
    files = list(metadata["file"])
    patients = {f: f"p{i}" for i, f in enumerate(files)}
    patients["A/A02.png"] = patients["A/A03.png"] = patients["B/B00.png"] = "shared"
    patients["A/A00.png"] = patients["A/A04.png"]  # A00's duplicates join A04 through it
    metadata.assign(patient=[patients[f] for f in files]).to_csv(data / "metadata.csv", index=False)
    for seed in range(4):
        out = tmp_path / f"split{seed}"
        cfg = SplitConfig(ratio=(0.5, 0.25, 0.25), seed=seed, group_by="patient")
        metrics = split_dataset(
            data / "raw", data / "manifest.csv", data / "metadata.csv", out, cfg
        )
        where = split_of_files(out)
        assert where["A/A02.png"] == where["A/A03.png"] == where["B/B00.png"]
        assert where["A/A00.png"] == where["A/A04.png"] == where["A/copy_of_A00.png"]
        assert metrics["groups"]["by"] == "patient"


def with_patients(data: Path, patient_of) -> None:
    """data/metadata.csv with a patient column: patient_of(file) ("" for none)."""
    metadata = pd.read_csv(data / "metadata.csv", dtype=str, keep_default_na=False)
    metadata["patient"] = [patient_of(f) for f in metadata["file"]]
    metadata.to_csv(data / "metadata.csv", index=False)


def test_group_by_refuses_a_class_whose_images_all_lack_a_value(tmp_path: Path) -> None:
    """Manifest paths matching none of class B's images (a wrong layout): refused, naming the
    class and its images' paths, before any split is written."""
    data = ingest(source_with_duplicates(tmp_path / "src"), tmp_path / "p")
    with_patients(data, lambda f: f"p-{f}" if f.startswith("A/") else "")
    args = (data / "raw", data / "manifest.csv", data / "metadata.csv", data / "split")
    with pytest.raises(SplitError, match=r"'patient': none of the 13 B images has a value.*B/"):
        split_dataset(*args, SplitConfig(group_by="patient"))
    assert not (data / "split").exists()


def test_group_by_warns_with_counts_when_some_images_lack_a_value(tmp_path: Path) -> None:
    data = ingest(source_with_duplicates(tmp_path / "src"), tmp_path / "p")
    with_patients(data, lambda f: "" if f in ("A/A05.png", "B/B07.png") else f"p-{f}")
    cfg = SplitConfig(ratio=(0.5, 0.25, 0.25), group_by="patient")
    metrics = split_dataset(
        data / "raw", data / "manifest.csv", data / "metadata.csv", data / "split", cfg
    )
    (warning,) = metrics["groups"]["warnings"]
    assert "2 of 27 images have no value (A 1, B 1;" in warning
    assert metrics["groups"]["images_without_value"] == 2

"""cxr.data.metadata: each image's patient, for patient-grouped folds and bootstraps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxr.core.errors import ConfigError
from cxr.data.metadata import balance_groups, patient_groups, read_metadata, read_origins


def test_groups_are_patients_within_their_source_else_the_image() -> None:
    metadata = pd.DataFrame({"source": ["a", "b", "a", "a"], "patient": ["1", "1", "", "1"]})
    groups = patient_groups(metadata, "patient")
    assert groups[0] == groups[3]  # same source, same patient
    assert groups[0] != groups[1]  # patient "1" of another source is someone else
    assert len(set(groups)) == 3  # the image without a patient stands alone


def test_without_the_column_every_image_stands_alone() -> None:
    metadata = pd.DataFrame({"source": ["a"] * 4, "patient": ["1"] * 4})
    assert len(set(patient_groups(metadata, ""))) == 4  # split.group_by "" : image by image
    assert len(set(patient_groups(metadata, "subject"))) == 4  # a column the source lacks
    assert len(set(patient_groups(metadata, "patient"))) == 1
    no_source = patient_groups(pd.DataFrame({"patient": ["x", "x", "y"]}), "patient")
    assert no_source[0] == no_source[1] != no_source[2]


def test_balance_groups_read_an_augmented_copy_under_its_original(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text(
        "file,source,patient\nCOVID/x.png,hannover,1\nNormal/y.png,nih,2\nNormal/z.png,,3\n"
    )
    (tmp_path / "manifest.csv").write_text(
        "file,class,source,augmented,seed\n"
        "COVID/x.png,COVID,COVID/x.png,False,\n"
        "COVID/x__aug0000.png,COVID,COVID/x.png,True,7\n"
    )
    metadata = read_metadata(tmp_path / "metadata.csv")
    origins = read_origins(tmp_path / "manifest.csv")
    files = [
        Path("data/augmented/train/COVID/x__aug0000.png"),
        Path("data/augmented/train/COVID/x.png"),
        Path("data/augmented/train/Normal/y.png"),
        Path("data/augmented/train/Normal/z.png"),  # the source names no hospital
        Path("data/augmented/train/Normal/new.png"),  # not in the metadata at all
    ]
    assert balance_groups(files, metadata, "source", origins) == [
        "hannover",
        "hannover",
        "nih",
        "",
        "",
    ]
    assert read_origins(tmp_path / "absent.csv") == {}


def test_balance_groups_name_the_key_and_the_columns_when_the_column_is_missing() -> None:
    metadata = pd.DataFrame({"source": ["a"], "sex": ["F"]}, index=pd.Index(["C/x.png"]))
    with pytest.raises(ConfigError, match=r"train.balance_by: 'hospital'.*columns: source, sex"):
        balance_groups([Path("C/x.png")], metadata, "hospital", {})
    empty = read_metadata(Path("absent.csv"))
    with pytest.raises(ConfigError, match=r"columns: none"):
        balance_groups([Path("C/x.png")], empty, "source", {})

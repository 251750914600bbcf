"""cxr.data.metadata: each image's patient, for patient-grouped folds and bootstraps."""

from __future__ import annotations

import pandas as pd

from cxr.data.metadata import patient_groups


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

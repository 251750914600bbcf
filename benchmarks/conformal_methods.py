"""Conformal prediction sets of every method on one finished pipeline run: the defer stage's
calibration (models/deferral.json: val's temperature-scaled probabilities and labels) and the
test split's predictions (plots/predictions.csv), through the stage's own functions
(cxr.evaluation.conformal.build_section). Prints the deferral rule's coverage and selective
accuracy on test (cxr.evaluation.deferral.operating_point) and, per conformal method, coverage;
each with its exact interval on the films' effective number given their patients (the file's
`patient` column; for runs written before it, the project's data/metadata.csv and
split.group_by). Then the range a calibration set of this size gives, mean set size,
singletons, full sets and per-class coverage.

    python benchmarks/recipe_pipeline.py --data ../shared/data/cxrmix --seeds 0 \\
        --stages defer --keep /tmp/seed0
    python benchmarks/conformal_methods.py /tmp/seed0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.core.config import ConformalConfig, read_params_file
from cxr.data.metadata import metadata_for, patient_groups, read_metadata
from cxr.evaluation.calibration import scale_probabilities
from cxr.evaluation.conformal import build_section
from cxr.evaluation.deferral import operating_point
from cxr.evaluation.metrics import read_patients, read_predictions

VARIANTS = (("lac", False), ("lac", True), ("aps", False), ("raps", False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("project", type=Path, help="a project folder after the defer stage")
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    rule = json.loads((args.project / "models/deferral.json").read_text())
    stored = rule["conformal"]
    calibration = (
        np.asarray(stored["calibration_labels"]),
        np.asarray(stored["calibration_probabilities"]),
    )
    predictions = pd.read_csv(args.project / "plots/predictions.csv", dtype={"patient": str})
    y, probabilities, classes = read_predictions(predictions)
    patients = patients_of(args.project, predictions)
    print(
        f"{len(calibration[0])} val images calibrate, {len(y)} test images of "
        f"{len(set(patients))} patients judge, alpha {args.alpha}"
    )
    print(deferral_line(y, probabilities, rule, classes, patients))
    if rule["temperature"] is not None:
        probabilities = scale_probabilities(probabilities, rule["temperature"])
    for method, mondrian in VARIANTS:
        cfg = ConformalConfig(method, args.alpha, mondrian, stored["seed"])
        section = build_section(cfg, calibration, (y, probabilities), classes, 0.95, patients)
        test = section["test"]
        expected = test["expected"]["range"]
        per_class = ", ".join(
            f"{name} {entry['coverage']:.3f}" for name, entry in test["per_class"].items()
        )
        print(
            f"{method}{' per class' if mondrian else ''}: coverage {test['coverage']:.3f} "
            f"[{test['coverage_ci']['low']:.3f}, {test['coverage_ci']['high']:.3f}] "
            f"({test['coverage_ci']['effective_images']:g} effective films), expected "
            f"range [{expected['low']:.3f}, {expected['high']:.3f}], holds {test['holds']}; "
            f"mean size {test['mean_set_size']:.2f}, singletons {test['singleton']:.2f}, "
            f"full {test['full']:.2f}; enough val images {section['enough_calibration_images']}; "
            f"per class {per_class}"
        )


def deferral_line(
    y: np.ndarray,
    probabilities: np.ndarray,
    rule: dict,
    classes: tuple[str, ...],
    patients: np.ndarray,
) -> str:
    """The defer stage's operating point on test, its intervals over films and over patients."""
    shown = []
    for name, groups in (("patients", patients), ("films", None)):
        point = operating_point(
            y, probabilities, rule["threshold"], rule["temperature"], classes, 0.95, groups
        )
        cover, right = point["coverage_ci"], point.get("selective_accuracy_ci")
        shown.append(
            f"over {name}: coverage {point['coverage']:.3f} [{cover['low']:.3f}, "
            f"{cover['high']:.3f}] ({cover['effective_images']:g} effective films)"
            + (
                f", selective accuracy {point['selective_accuracy']:.3f} [{right['low']:.3f}, "
                f"{right['high']:.3f}] ({right['effective_images']:g} of {point['accepted']})"
                if right
                else ""
            )
        )
    return f"deferral, threshold {rule['threshold']}: " + "; ".join(shown)


def patients_of(project: Path, predictions: pd.DataFrame) -> np.ndarray:
    """Each test image's patient: the predictions file's codes, or for a file written before
    it had them, from the project's metadata as the evaluate stage derives them."""
    codes = read_patients(predictions)
    if codes is not None:
        return codes
    group_by = read_params_file(project / "params.yaml")["split"]["group_by"]  # raw: old runs
    metadata = read_metadata(project / "data/metadata.csv")
    return patient_groups(metadata_for(predictions["image"], metadata), group_by)


if __name__ == "__main__":
    main()

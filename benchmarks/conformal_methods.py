"""Conformal prediction sets of every method on one finished pipeline run: the defer stage's
calibration (models/deferral.json: val's temperature-scaled probabilities and labels) and the
test split's predictions (plots/predictions.csv), through the stage's own functions
(cxr.evaluation.conformal.build_section). Prints coverage with its exact interval, the range a
calibration set of this size gives, mean set size, singletons, full sets and per-class coverage.

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

from cxr.core.config import ConformalConfig
from cxr.evaluation.calibration import scale_probabilities
from cxr.evaluation.conformal import build_section
from cxr.evaluation.metrics import read_predictions

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
    y, probabilities, classes = read_predictions(
        pd.read_csv(args.project / "plots/predictions.csv")
    )
    if rule["temperature"] is not None:
        probabilities = scale_probabilities(probabilities, rule["temperature"])
    print(
        f"{len(calibration[0])} val images calibrate, {len(y)} test images judge, "
        f"alpha {args.alpha}"
    )
    for method, mondrian in VARIANTS:
        cfg = ConformalConfig(method, args.alpha, mondrian, stored["seed"])
        section = build_section(cfg, calibration, (y, probabilities), classes, 0.95)
        test = section["test"]
        expected = test["expected"]["range"]
        per_class = ", ".join(
            f"{name} {entry['coverage']:.3f}" for name, entry in test["per_class"].items()
        )
        print(
            f"{method}{' per class' if mondrian else ''}: coverage {test['coverage']:.3f} "
            f"[{test['coverage_ci']['low']:.3f}, {test['coverage_ci']['high']:.3f}], expected "
            f"range [{expected['low']:.3f}, {expected['high']:.3f}], holds {test['holds']}; "
            f"mean size {test['mean_set_size']:.2f}, singletons {test['singleton']:.2f}, "
            f"full {test['full']:.2f}; enough val images {section['enough_calibration_images']}; "
            f"per class {per_class}"
        )


if __name__ == "__main__":
    main()

"""Stage `defer`: selective prediction — which test images the model should refer to a
radiologist (cxr.evaluation.deferral) — and conformal prediction sets, the classes an image
cannot be ruled out of (cxr.evaluation.conformal).

The confidence threshold is chosen on the val split (calibrated with the temperature the
evaluate stage fitted there) for `deferral.target_risk`, then judged on the test split's
plots/predictions.csv. Writes reports/deferral.json, its headline metrics/deferral.json, the
risk-coverage curves plots/risk_coverage.csv, and models/deferral.json, the rule cxr-predict
applies to the same model.

The conformal sets are calibrated on the same temperature-scaled val probabilities (here, not in
a stage of their own, as both need one pass of the model over val) and judged on test:
reports/deferral.json's `conformal` section, plots/conformal.csv (coverage and set size against
alpha), and the calibration set in models/deferral.json for cxr-predict.
"""

from cxr.training.kernels import pin_kernels

# Reproducible mode re-executes the stage with pinned CPU kernels: now, before the
# imports below load torch, rather than after them.
pin_kernels()

import numpy as np
import pandas as pd
import torch

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import read_json, sha256_file, write_csv, write_json
from cxr.evaluation.calibration import scale_probabilities
from cxr.evaluation.conformal import alpha_curve, build_section, lines, rule_section
from cxr.evaluation.deferral import build_report, headline, line, rule, temperature_for
from cxr.evaluation.evaluate import split_logits
from cxr.evaluation.figures import conformal_figure
from cxr.evaluation.metrics import read_patients, read_predictions, round_probabilities
from cxr.tracking.record import DEFERRAL_FOLDER
from cxr.tracking.runs import pipeline_run
from cxr.training.checkpoint import load_checkpoint
from cxr.training.runtime import configure, enter_reproducible_mode, select_device


def main() -> None:
    params = load_params()
    enter_reproducible_mode(params.train)  # the kernels and threads the model was trained with
    cfg = params.deferral
    with pipeline_run("defer", params) as run:
        device = select_device("auto")
        configure(params.train, device)
        temperature = temperature_for(cfg.calibrated, read_json(layout.EVAL_REPORT))
        model, card = load_checkpoint(layout.MODEL, device)
        val, logits = split_logits(
            model, card, layout.SPLIT / "val", params.evaluate.batch_size, device
        )
        val_probabilities = round_probabilities(torch.softmax(torch.from_numpy(logits), 1).numpy())
        predictions = pd.read_csv(layout.PREDICTIONS, dtype={"patient": str})
        y_test, test_probabilities, classes = read_predictions(predictions)
        patients = read_patients(predictions)  # a patient's films share their outcome
        report, curves = build_report(
            cfg,
            temperature,
            (val.labels.numpy(), val_probabilities),
            (y_test, test_probabilities),
            classes,
            patients,
        )
        # rounded as models/deferral.json stores them, so cxr-predict's sets are the report's
        calibration = (val.labels.numpy(), np.round(scaled(val_probabilities, temperature), 6))
        test = (y_test, scaled(test_probabilities, temperature))
        conformal = params.conformal
        report["conformal"] = build_section(
            conformal, calibration, test, classes, params.evaluate.confidence, patients
        )
        curve = alpha_curve(calibration, test, conformal)
        write_json(layout.DEFERRAL_REPORT, report)
        write_json(layout.DEFERRAL_METRICS, headline(report))
        write_csv(layout.RISK_COVERAGE, curves)
        write_csv(layout.CONFORMAL_CURVE, curve)
        written = rule(report, sha256_file(layout.MODEL), classes)
        write_json(
            layout.DEFERRAL_RULE, written | {"conformal": rule_section(conformal, calibration)}
        )
        run.log_figure(conformal_figure(curve, conformal.alpha), f"{DEFERRAL_FOLDER}/conformal.png")
        print(line(report))
        for shown in lines(report["conformal"]):
            print(shown)


def scaled(probabilities: np.ndarray, temperature: float | None) -> np.ndarray:
    """Temperature-scaled probabilities (unchanged without a temperature)."""
    return probabilities if temperature is None else scale_probabilities(probabilities, temperature)


if __name__ == "__main__":
    run_stage(main)

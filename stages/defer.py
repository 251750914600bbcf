"""Stage `defer`: selective prediction — which test images the model should refer to a
radiologist (cxr.evaluation.deferral).

The confidence threshold is chosen on the val split (calibrated with the temperature the
evaluate stage fitted there) for `deferral.target_risk`, then judged on the test split's
plots/predictions.csv. Writes reports/deferral.json, its headline metrics/deferral.json, the
risk-coverage curves plots/risk_coverage.csv, and models/deferral.json, the rule cxr-predict
applies to the same model.
"""

from cxr.training.kernels import pin_kernels

# Reproducible mode re-executes the stage with pinned CPU kernels: now, before the
# imports below load torch, rather than after them.
pin_kernels()

import pandas as pd
import torch

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import read_json, sha256_file, write_csv, write_json
from cxr.evaluation.deferral import build_report, headline, line, rule, temperature_for
from cxr.evaluation.evaluate import split_logits
from cxr.evaluation.metrics import read_predictions, round_probabilities
from cxr.tracking.runs import pipeline_run
from cxr.training.checkpoint import load_checkpoint
from cxr.training.runtime import configure, enter_reproducible_mode, select_device


def main() -> None:
    params = load_params()
    enter_reproducible_mode(params.train)  # the kernels and threads the model was trained with
    cfg = params.deferral
    with pipeline_run("defer", params):
        device = select_device("auto")
        configure(params.train, device)
        temperature = temperature_for(cfg.calibrated, read_json(layout.EVAL_REPORT))
        model, card = load_checkpoint(layout.MODEL, device)
        val, logits = split_logits(
            model, card, layout.SPLIT / "val", params.evaluate.batch_size, device
        )
        val_probabilities = round_probabilities(torch.softmax(torch.from_numpy(logits), 1).numpy())
        y_test, test_probabilities, classes = read_predictions(pd.read_csv(layout.PREDICTIONS))
        report, curves = build_report(
            cfg,
            temperature,
            (val.labels.numpy(), val_probabilities),
            (y_test, test_probabilities),
            classes,
        )
        write_json(layout.DEFERRAL_REPORT, report)
        write_json(layout.DEFERRAL_METRICS, headline(report))
        write_csv(layout.RISK_COVERAGE, curves)
        write_json(layout.DEFERRAL_RULE, rule(report, sha256_file(layout.MODEL), classes))
        print(line(report))


if __name__ == "__main__":
    run_stage(main)

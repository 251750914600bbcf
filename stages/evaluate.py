"""Stage `evaluate`: score the trained model on the held-out test split.

Writes reports/eval.json (classification metrics with bootstrap confidence intervals and
calibration, before and after temperature scaling fitted on the val split), its headline
metrics/eval.json, and the DVC plot data: plots/predictions.csv (from which every metric can
be recomputed; confusion matrices), plots/roc.csv, plots/precision_recall.csv (one curve per
class), plots/reliability.csv and plots/per_class.csv. The same plots go to the MLflow run as
figures under evaluation/ (the files and metrics are recorded when the stage ends).
"""

from cxr.training.kernels import pin_kernels

# Reproducible mode re-executes the stage with pinned CPU kernels: now, before the
# imports below load torch, rather than after them.
pin_kernels()

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import write_json
from cxr.core.layout import project_root
from cxr.data.metadata import read_metadata
from cxr.evaluation.evaluate import (
    baseline_line,
    calibration_line,
    evaluate_model,
    evaluation_figures,
    source_only_line,
    summary_line,
    write_evaluation,
)
from cxr.evaluation.external import evaluate_external, external_line
from cxr.evaluation.subgroups import confounding_line
from cxr.tracking.record import EVALUATION_FOLDER
from cxr.tracking.runs import pipeline_run
from cxr.training.checkpoint import load_checkpoint
from cxr.training.pixels import index_folder
from cxr.training.runtime import configure, enter_reproducible_mode, select_device


def main() -> None:
    params = load_params()
    enter_reproducible_mode(params.train)  # the kernels and threads the model was trained with
    with pipeline_run("evaluate", params) as run:
        device = select_device("auto")
        configure(params.train, device)
        model, card = load_checkpoint(layout.MODEL, device)
        metadata = read_metadata(layout.METADATA)
        group_by = params.split.group_by  # a patient's images are resampled together
        result = evaluate_model(
            model, card, layout.SPLIT, params.evaluate, device, metadata, group_by
        )
        external = evaluate_external(
            model,
            card,
            params.evaluate.external,
            project_root(),
            params.data,
            params.evaluate,
            index_folder(layout.SPLIT / "train", card.classes),
            metadata,
            device,
            group_by,
        )
        write_evaluation(result)
        write_json(layout.EXTERNAL_REPORT, external)
        for name, figure in evaluation_figures(result).items():
            run.log_figure(figure, f"{EVALUATION_FOLDER}/{name}")
        verdict = result.report["baselines"]["model_minus_majority"]["verdict"]
        run.set_tags({"cxr.vs_majority_baseline": verdict})
        print(summary_line(result))
        for line in (
            baseline_line(result.report),
            source_only_line(result.report),
            calibration_line(result.report),
            confounding_line(result.report.get("confounding", {})),
            *(external_line(name, entry) for name, entry in external.items()),
        ):
            if line:
                print(line)


if __name__ == "__main__":
    run_stage(main)

"""Stage `evaluate`: score the trained model on the held-out test split.

Writes metrics/eval.json (classification metrics with bootstrap confidence intervals and
calibration, before and after temperature scaling fitted on the val split), and the DVC plot
data: plots/predictions.csv (from which every metric can be recomputed; confusion matrices),
plots/roc/, plots/pr/ (one curve per class), plots/reliability/ and plots/per_class.csv.
The same plots go to the MLflow run as figures.
"""

from cxr import layout
from cxr.config import load_params
from cxr.errors import run_stage
from cxr.evaluation import (
    baseline_line,
    evaluate_model,
    evaluation_figures,
    summary_line,
    write_evaluation,
)
from cxr.models import load_checkpoint
from cxr.tracking import pipeline_run
from cxr.training import select_device


def main() -> None:
    params = load_params()
    with pipeline_run("evaluate", params) as run:
        device = select_device("auto")
        model, card = load_checkpoint(layout.MODEL, device)
        result = evaluate_model(model, card, layout.SPLIT, params.evaluate, device)
        write_evaluation(result)
        run.log_metrics_file(layout.EVAL_METRICS, "eval")
        run.log_artifact(layout.PREDICTIONS, "evaluation")
        for folder in (layout.ROC_DIR, layout.PR_DIR, layout.RELIABILITY_DIR):
            run.log_artifacts(folder, f"evaluation/{folder.name}")
        for name, figure in evaluation_figures(result).items():
            run.log_figure(figure, f"plots/{name}")
        verdict = result.report["baselines"]["model_minus_majority"]["verdict"]
        run.set_tags({"cxr.vs_majority_baseline": verdict})
        print(summary_line(result))
        print(baseline_line(result.report))


if __name__ == "__main__":
    run_stage(main)

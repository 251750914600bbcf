"""Stage `evaluate`: score the trained model on the held-out test split.

Writes metrics/eval.json (with bootstrap confidence intervals) and plots/predictions.csv, from
which DVC draws the confusion matrix and every metric can be recomputed.
"""

import torch

from cxr import layout
from cxr.config import load_params
from cxr.data import load_split
from cxr.errors import run_stage
from cxr.fsio import write_csv, write_json
from cxr.metrics import classification_metrics, confusion, predictions_frame
from cxr.models import load_checkpoint
from cxr.plots import confusion_figure
from cxr.tracking import pipeline_run
from cxr.training import predict_logits, select_device


def main() -> None:
    params = load_params()
    cfg = params.evaluate
    with pipeline_run("evaluate", params) as run:
        device = select_device("auto")
        model, card = load_checkpoint(layout.MODEL, device)
        test = load_split(layout.SPLIT / "test", card.image_size, card.classes)
        probabilities = torch.softmax(
            predict_logits(model, test.pixels, cfg.batch_size, device), dim=1
        ).numpy()
        y_true, y_pred = test.labels.numpy(), probabilities.argmax(1)
        report = classification_metrics(
            y_true, y_pred, card.classes, cfg.bootstrap_resamples, cfg.confidence, cfg.seed
        )
        write_json(layout.EVAL_METRICS, report)
        files = [path.relative_to(layout.SPLIT / "test").as_posix() for path in test.files]
        write_csv(layout.PREDICTIONS, predictions_frame(files, y_true, probabilities, card.classes))
        run.log_metrics_file(layout.EVAL_METRICS, "eval")
        run.log_artifact(layout.PREDICTIONS, "evaluation")
        counts = confusion(y_true, y_pred, len(card.classes))
        run.log_figure(confusion_figure(counts, card.classes), "plots/confusion_matrix.png")
        ci = report["accuracy_ci"]
        print(
            f"evaluate: test accuracy {report['accuracy']:.3f} "
            f"[{ci.get('low', float('nan')):.3f}, {ci.get('high', float('nan')):.3f}], "
            f"macro-F1 {report['macro']['f1']:.3f} on {len(test)} images"
        )


if __name__ == "__main__":
    run_stage(main)

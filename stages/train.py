"""Stage `train`: fine-tune a torchvision model on the augmented train split.

Writes models/model.pt (the lowest-validation-loss epoch), metrics/train.json and the
per-epoch history plots/train_history.csv, which also goes to MLflow as training runs.
"""

import pandas as pd

from cxr import layout
from cxr.config import load_params
from cxr.data import index_folder, load_split
from cxr.errors import run_stage
from cxr.fsio import write_csv, write_json
from cxr.models import ModelCard, build_model, save_checkpoint
from cxr.plots import history_figure
from cxr.tracking import pipeline_run
from cxr.training import EpochStats, fit, seed_everything, select_device, summarize


def main() -> None:
    params = load_params()
    cfg = params.train
    with pipeline_run("train", params) as run:
        device = select_device(cfg.device)
        seed_everything(cfg.seed, device)
        classes = index_folder(layout.AUGMENTED_TRAIN).classes
        # Build first: missing pretrained weights must fail before any data is decoded.
        model = build_model(cfg.model, len(classes), cfg.weights)
        train_set = load_split(layout.AUGMENTED_TRAIN, cfg.image_size, classes)
        val_set = load_split(layout.SPLIT / "val", cfg.image_size, classes)

        history: list[dict] = []

        def on_epoch(stats: EpochStats) -> None:
            history.append(stats.as_dict())
            write_csv(layout.TRAIN_HISTORY, pd.DataFrame(history))
            run.log_metrics(
                {k: v for k, v in stats.as_dict().items() if k != "epoch"}, step=stats.epoch
            )

        result = fit(model, train_set, val_set, cfg, params.lr, device, on_epoch)
        model.load_state_dict(result.best_state)
        card = ModelCard(cfg.model, classes, cfg.image_size, cfg.weights, result.best_epoch)
        save_checkpoint(layout.MODEL, model, card)
        write_json(layout.TRAIN_METRICS, summarize(result, len(train_set), len(val_set)))
        run.log_metrics_file(layout.TRAIN_METRICS, "train")
        run.log_figure(history_figure(pd.DataFrame(history)), "plots/train_history.png")
        run.log_model(model, val_set.pixels[:2], params.tracking.registered_model)
        print(
            f"train: best epoch {result.best_epoch} on {device}, "
            f"val accuracy {result.best.val_accuracy:.3f}"
        )


if __name__ == "__main__":
    run_stage(main)

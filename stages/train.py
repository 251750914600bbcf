"""Stage `train`: fine-tune a torchvision model on the augmented train split.

Writes models/model.pt (the lowest-validation-loss epoch), metrics/train.json and the
per-epoch history plots/train_history.csv, which also goes to MLflow as it trains (`train/loss`,
`val/loss`, ... with step = epoch); prints one line per epoch.
models/checkpoint/last.pt holds the resume state after every epoch: re-running a killed stage
with the same params and data continues from the last complete epoch.

Under `torchrun --nproc_per_node N stages/train.py` every rank trains its shard (DDP); only
rank 0 writes files and opens MLflow.
"""

import time
from pathlib import Path

import pandas as pd

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import write_csv, write_json
from cxr.core.progress import epoch_line
from cxr.tracking.record import TRAINING_FOLDER, epoch_metrics
from cxr.tracking.runs import writer_run
from cxr.training.checkpoint import ModelCard, save_checkpoint
from cxr.training.distributed import (
    check_ranks_agree,
    device_for,
    process_group,
    world_from_env,
    writer_first,
)
from cxr.training.inference import Normalize
from cxr.training.loop import REGIMES, fit
from cxr.training.models import MODELS, build_model, resolve_weights
from cxr.training.optim import OPTIMIZERS, SCHEDULERS
from cxr.training.pixels import cached_split, index_folder
from cxr.training.report import history_figure, summarize
from cxr.training.runtime import seed_everything, select_device
from cxr.training.state import SELECTION, EpochStats, resume_key


def main() -> None:
    params = load_params(registries=(MODELS, OPTIMIZERS, SCHEDULERS, REGIMES, SELECTION))
    cfg = params.train
    world = world_from_env()
    device = device_for(world, select_device(cfg.device))
    seed_everything(cfg.seed, device)
    with process_group(world, device), writer_run("train", params, world.is_writer) as run:
        classes = index_folder(layout.AUGMENTED_TRAIN).classes
        # Build first: missing or refused pretrained weights fail before any data is decoded.
        source = resolve_weights(cfg.model, cfg.weights, layout.project_root())
        model = build_model(cfg.model, len(classes), source)
        weights_sha256 = source.sha256 if source is not None else ""
        if source is not None:
            print(f"train: {cfg.model} from {source.path} (sha256 {weights_sha256[:16]}…)")
            run.set_tags(
                {"cxr.weights.file": str(source.path), "cxr.weights.sha256": weights_sha256}
            )
        train_set, val_set = writer_first(
            world,
            lambda build: [
                cached_split(folder, cfg.image_size, classes, build)
                for folder in (layout.AUGMENTED_TRAIN, layout.SPLIT / "val")
            ],
        )
        history: list[dict] = []
        clock = [time.perf_counter()]  # when the epoch now running began

        def on_epoch(stats: EpochStats) -> None:
            if not world.is_writer:
                return
            now = time.perf_counter()
            print(epoch_line(stats.as_dict(), cfg.epochs, now - clock[0]), flush=True)
            clock[0] = now
            history.append(stats.as_dict())
            write_csv(layout.TRAIN_HISTORY, pd.DataFrame(history))
            step, metrics = epoch_metrics(stats.as_dict())
            run.log_metrics(metrics, step=step)

        result = fit(
            model,
            train_set,
            val_set,
            cfg,
            params.lr,
            device,
            on_epoch,
            checkpoint=layout.CHECKPOINT,
            key=resume_key(
                cfg,
                params.lr,
                [train_set.key, val_set.key, weights_sha256],
                world.size,
                Path(__file__),
            ),
            world=world,
        )
        fingerprint = check_ranks_agree(model)
        if not world.is_writer:
            return
        frame = pd.DataFrame([stats.as_dict() for stats in result.history])
        write_csv(layout.TRAIN_HISTORY, frame)  # includes epochs restored from a checkpoint
        model.load_state_dict(result.best_state)
        card = ModelCard(
            cfg.model, classes, cfg.image_size, cfg.weights, result.best_epoch, weights_sha256
        )
        save_checkpoint(layout.MODEL, model, card)
        summary = summarize(result, len(train_set), len(val_set))
        write_json(layout.TRAIN_METRICS, {**summary, "weights_sha256": weights_sha256})
        run.log_figure(history_figure(frame), f"{TRAINING_FOLDER}/history.png")
        example = Normalize(cfg.model)(val_set.pixels[:2])  # what the model itself receives
        run.log_model(model, example, params.tracking.registered_model)
        print(
            f"train: best epoch {result.best_epoch} on {device} x{world.size}, "
            f"val accuracy {result.best.val_accuracy:.3f}, final weights {fingerprint[:16]}"
        )


if __name__ == "__main__":
    run_stage(main)

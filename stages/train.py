"""Stage `train`: fine-tune a model on the augmented train split.

Writes models/model.pt (the epoch chosen by train.select_by), metrics/train.json, the per-epoch
history plots/train_history.csv (also logged to MLflow as it trains, with the throughput, which
no tracked file holds) and reports/environment.json (what decided the numbers, and the machine).
In train.reproducible mode the stage first re-executes itself with pinned CPU kernels and
threads (cxr.training.runtime). models/checkpoint/last.pt holds the resume state after every
epoch, so a killed run continues from its last complete epoch; a finished run removes it.

Under `torchrun --nproc_per_node N stages/train.py` every rank trains its shard (DDP); only
rank 0 writes files and opens MLflow.
"""

from cxr.training.kernels import pin_kernels

# Reproducible mode re-executes the stage with pinned CPU kernels: now, before the
# imports below load torch, rather than after them.
pin_kernels()

from functools import partial
from pathlib import Path

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import write_csv, write_json
from cxr.data.metadata import balance_groups, read_metadata, read_origins
from cxr.tracking.record import TRAINING_FOLDER, log_epoch
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
from cxr.training.preprocessing import PREPROCESSING, Preprocessing
from cxr.training.report import EpochReport, history_figure, history_frame, summarize
from cxr.training.runtime import (
    configure,
    enter_reproducible_mode,
    environment_fingerprint,
    select_device,
)
from cxr.training.state import SELECTION, resume_key


def draw_groups(column: str, files: tuple[Path, ...]) -> list[str] | None:
    """train.balance_by's value of each training image (under the original an augmented copy
    was made from), or None when it is off."""
    if not column:
        return None
    origins = read_origins(layout.AUGMENTED_MANIFEST)
    return balance_groups(files, read_metadata(layout.METADATA), column, origins)


def main() -> None:
    params = load_params(
        registries=(MODELS, OPTIMIZERS, SCHEDULERS, REGIMES, SELECTION, PREPROCESSING)
    )
    cfg = params.train
    prep = Preprocessing.from_config(params.preprocess)  # stored in the model card
    enter_reproducible_mode(cfg)  # may re-execute this process with pinned kernels
    world = world_from_env()
    device = device_for(world, select_device(cfg.device))
    configure(cfg, device)
    environment = environment_fingerprint(cfg, device)
    with process_group(world, device), writer_run("train", params, world.is_writer) as run:
        index = index_folder(layout.AUGMENTED_TRAIN)
        classes = index.classes
        groups = draw_groups(cfg.balance_by, index.files)
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
                cached_split(folder, cfg.image_size, classes, build, prep)
                for folder in (layout.AUGMENTED_TRAIN, layout.SPLIT / "val")
            ],
        )
        data_keys = [train_set.key, val_set.key, weights_sha256, *(groups or [])]
        on_epoch = EpochReport(layout.TRAIN_HISTORY, cfg.epochs, partial(log_epoch, run))
        result = fit(
            model,
            train_set,
            val_set,
            cfg,
            params.lr,
            device,
            on_epoch if world.is_writer else lambda stats: None,
            checkpoint=layout.CHECKPOINT,
            key=resume_key(cfg, params.lr, data_keys, world.size, Path(__file__)),
            world=world,
            groups=groups,
        )
        check_ranks_agree(model)  # the trained weights: ranks out of step are a broken run
        model.load_state_dict(result.best_state)
        # the saved weights too: under train.ema_decay every rank keeps its own moving average
        fingerprint = check_ranks_agree(model)
        if not world.is_writer:
            return
        history = history_frame(result.history)  # with the epochs a resumed run restored
        write_csv(layout.TRAIN_HISTORY, history)
        card = ModelCard(
            cfg.model,
            classes,
            cfg.image_size,
            cfg.weights,
            result.best_epoch,
            weights_sha256,
            prep.as_dict(),
        )
        save_checkpoint(layout.MODEL, model, card)
        extra = {"weights_sha256": weights_sha256, "environment": environment["hash"]}
        write_json(layout.TRAIN_METRICS, summarize(result, len(train_set), len(val_set), extra))
        write_json(layout.ENVIRONMENT_REPORT, environment)
        layout.CHECKPOINT.unlink(missing_ok=True)  # finished: a forced re-run trains anew
        run.log_figure(history_figure(history), f"{TRAINING_FOLDER}/history.png")
        example = Normalize(cfg.model)(val_set.pixels[:2])  # what the model itself receives
        run.log_model(model, example, params.tracking.registered_model)
        print(
            f"train: best epoch {result.best_epoch} on {device} x{world.size}, "
            f"val accuracy {result.best.val_accuracy:.3f}, saved weights {fingerprint[:16]}, "
            f"environment {environment['hash']}"
        )


if __name__ == "__main__":
    run_stage(main)

"""What a training run reports: a line per epoch, the history table and figure, the metrics.

Tracked outputs hold no timings: a rerun with the same inputs must give the same bytes, so the
throughput (`TIMINGS`) goes to the console line and MLflow only, never to
plots/train_history.csv or metrics/train.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from cxr.core.fsio import write_csv
from cxr.core.progress import epoch_line
from cxr.training.state import EpochStats, FitResult

TIMINGS = ("images_per_second",)


def history_frame(history: list[EpochStats]) -> pd.DataFrame:
    """plots/train_history.csv: one row per epoch, without timings."""
    return pd.DataFrame([stats.as_dict() for stats in history]).drop(columns=list(TIMINGS))


class EpochReport:
    """Called after every epoch: prints its line, rewrites the history table (so a long run's
    curves can be watched as it goes) and hands the epoch's numbers, throughput included, to
    `log` (MLflow)."""

    def __init__(
        self, history_path: Path, epochs: int, log: Callable[[Mapping[str, float]], Any]
    ) -> None:
        self.history_path = history_path
        self.epochs = epochs
        self.log = log
        self.history: list[EpochStats] = []
        self.started = time.perf_counter()  # when the epoch now running began

    def __call__(self, stats: EpochStats) -> None:
        now = time.perf_counter()
        print(epoch_line(stats.as_dict(), self.epochs, now - self.started), flush=True)
        self.started = now
        self.history.append(stats)
        write_csv(self.history_path, history_frame(self.history))
        self.log(stats.as_dict())


def summarize(
    result: FitResult, train_images: int, val_images: int, extra: Mapping[str, Any]
) -> dict:
    """metrics/train.json: the kept epoch's validation scores and `extra` (the weights' and
    the environment's hashes); no timings. Val accuracy is in plots/train_history.csv and
    MLflow, not here: the balanced one is what selects the epoch, and issue 13 keeps `dvc exp
    show --only-changed` within 40 columns."""
    best = result.best
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_images": train_images,
        "val_images": val_images,
        "train_loss": round(best.train_loss, 6),
        "val_loss": round(best.val_loss, 6),
        "val_balanced_accuracy": round(best.val_balanced_accuracy, 6),
        "val_macro_f1": round(best.val_macro_f1, 6),
        **extra,
    }


def history_figure(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch, train vs validation."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss, accuracy = figure.subplots(1, 2)
    loss.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    loss.plot(history["epoch"], history["val_loss"], marker="o", label="val")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    accuracy.plot(history["epoch"], history["train_accuracy"], marker="o", label="train")
    accuracy.plot(history["epoch"], history["val_accuracy"], marker="o", label="val")
    accuracy.plot(history["epoch"], history["val_macro_f1"], marker="o", label="val macro-F1")
    accuracy.set(xlabel="epoch", ylim=(0, 1.02), title="Accuracy")
    for axis in (loss, accuracy):
        axis.legend()
        axis.grid(alpha=0.3)
    return figure

"""What a training run reports: metrics/train.json and the history figure."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from cxr.training.state import FitResult


def summarize(result: FitResult, train_images: int, val_images: int) -> dict:
    """metrics/train.json: the kept epoch's validation scores; no timings, so reruns with
    the same inputs give identical bytes."""
    best = result.best
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_images": train_images,
        "val_images": val_images,
        "train_loss": round(best.train_loss, 6),
        "val_loss": round(best.val_loss, 6),
        "val_accuracy": round(best.val_accuracy, 6),
        "val_balanced_accuracy": round(best.val_balanced_accuracy, 6),
        "val_macro_f1": round(best.val_macro_f1, 6),
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

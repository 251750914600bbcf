"""Where each stage reads and writes, relative to the project root. dvc.yaml mirrors this."""

from __future__ import annotations

import os
from pathlib import Path

RAW = Path("data/raw")  # <Class>/<name>.png, 8-bit grayscale
MASKS = Path("data/masks")  # <Class>/<name>.png, same name as the image; may be empty
MANIFEST = Path("data/manifest.csv")
REJECTED = Path("data/rejected.csv")  # source, class, reason of each image left out
SPLIT = Path("data/split")  # {train,val,test}/<Class>/<name>.png
AUGMENTED = Path("data/augmented")  # train/<Class>/..., manifest.csv
AUGMENTED_TRAIN = AUGMENTED / "train"
AUGMENTED_MANIFEST = AUGMENTED / "manifest.csv"

MODEL = Path("models/model.pt")
# Resume state of an interrupted train stage (a DVC `persist` output: kept across runs).
CHECKPOINT = Path("models/checkpoint/last.pt")

METRICS = Path("metrics")
DOWNLOAD_METRICS = METRICS / "download.json"
DATA_METRICS = METRICS / "data.json"
AUGMENT_METRICS = METRICS / "augment.json"
TRAIN_METRICS = METRICS / "train.json"
EVAL_METRICS = METRICS / "eval.json"
GRADCAM_METRICS = METRICS / "gradcam.json"

PLOTS = Path("plots")
TRAIN_HISTORY = PLOTS / "train_history.csv"
PREDICTIONS = PLOTS / "predictions.csv"
CLASS_DISTRIBUTION = PLOTS / "class_distribution.csv"
GRADCAM_DIR = PLOTS / "gradcam"
ROC_DIR = PLOTS / "roc"  # <Class>.csv: one-vs-rest ROC curve (fpr, tpr)
PR_DIR = PLOTS / "pr"  # <Class>.csv: one-vs-rest precision-recall curve
RELIABILITY_DIR = PLOTS / "reliability"  # uncalibrated.csv [, temperature_scaled.csv]
PER_CLASS = PLOTS / "per_class.csv"  # long table for the per-class bar chart


def project_root() -> Path:
    """The project's root: DVC's `DVC_ROOT` when a stage runs under DVC, else the current folder.

    Queued and `--temp` experiments run in a temporary copy of the repository; DVC then points
    `DVC_ROOT` at the original repository, which is where relative data sources and the MLflow
    store live.
    """
    root = os.environ.get("DVC_ROOT")
    return Path(root).resolve() if root else Path.cwd().resolve()

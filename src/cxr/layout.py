"""Where each stage reads and writes, relative to the project root. dvc.yaml mirrors this."""

from __future__ import annotations

import os
from pathlib import Path

# Written by the first stage, `params`, once params.yaml has passed validation; its content
# never changes, so the stages after it re-run only for their own params and inputs.
PARAMS_CHECKED = Path("data/params.checked")
RAW = Path("data/raw")  # <Class>/<name>.png, 8-bit grayscale
MASKS = Path("data/masks")  # <Class>/<name>.png, same name as the image; may be empty
MANIFEST = Path("data/manifest.csv")
REJECTED = Path("data/rejected.csv")  # source, class, reason of each image left out
SPLIT = Path("data/split")  # {train,val,test}/<Class>/<name>.png
AUGMENTED = Path("data/augmented")  # train/<Class>/..., manifest.csv
AUGMENTED_TRAIN = AUGMENTED / "train"
AUGMENTED_MANIFEST = AUGMENTED / "manifest.csv"

MODEL = Path("models/model.pt")
# Resume state of an interrupted train stage; not a DVC output (see dvc.yaml), keyed instead.
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


# Where DVC runs queued and `--temp` experiments: a temporary git clone at
# <project root>/.dvc/tmp/exps/<tmp name> (dvc.repo.experiments.executor.local.TempDirExecutor).
EXP_WORKSPACE_PARTS = (".dvc", "tmp", "exps")


def project_root() -> Path:
    """The project's root, where relative data sources and the MLflow store live.

    A stage runs in the folder DVC sets as `DVC_ROOT` (else the current folder). Queued and
    `--temp` experiments run in a temporary copy inside the project's `.dvc/tmp/exps/`, and
    `DVC_ROOT` then names that copy, which DVC deletes afterwards: the root is the project
    that holds it.
    """
    root = os.environ.get("DVC_ROOT")
    return outside_exp_workspace(Path(root).resolve() if root else Path.cwd().resolve())


def outside_exp_workspace(path: Path) -> Path:
    """`<root>/.dvc/tmp/exps/<tmp>/...` → `<root>`; any other path unchanged."""
    parts, n = path.parts, len(EXP_WORKSPACE_PARTS)
    for start in range(1, len(parts) - n + 1):
        if parts[start : start + n] == EXP_WORKSPACE_PARTS:
            return Path(*parts[:start])
    return path

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
METADATA = Path("data/metadata.csv")  # file + the source's metadata columns (e.g. patient)
REJECTED = Path("data/rejected.csv")  # source, class, reason of each image left out
SPLIT = Path("data/split")  # {train,val,test}/<Class>/<name>.png
AUGMENTED = Path("data/augmented")  # train/<Class>/..., manifest.csv
AUGMENTED_TRAIN = AUGMENTED / "train"
AUGMENTED_MANIFEST = AUGMENTED / "manifest.csv"

MODEL = Path("models/model.pt")
# Resume state of an interrupted train stage; not a DVC output (see dvc.yaml), keyed instead,
# and removed when the stage finishes: a finished run is never resumed.
CHECKPOINT = Path("models/checkpoint/last.pt")

# DVC metrics: how good the model is, and nothing else, so `dvc exp show` and
# `dvc metrics diff` stay readable. The stages' full reports sit in reports/ (plain outputs).
METRICS = Path("metrics")
TRAIN_METRICS = METRICS / "train.json"  # the kept epoch's validation scores
EVAL_METRICS = METRICS / "eval.json"  # headline test metrics (cxr.evaluation.evaluate.headline)
GRADCAM_METRICS = METRICS / "gradcam.json"  # localisation and faithfulness headline

REPORTS = Path("reports")
DOWNLOAD_REPORT = REPORTS / "download.json"  # images, masks, rejects per class
DATA_REPORT = REPORTS / "data.json"  # per-split class counts, duplicate groups
AUGMENT_REPORT = REPORTS / "augment.json"  # per-class counts before/after oversampling
EVAL_REPORT = REPORTS / "eval.json"  # every test metric; recomputable from PREDICTIONS
GRADCAM_REPORT = REPORTS / "gradcam.json"  # localisation per class, layer and method
# What decided the trained model's numbers (versions, kernels, threads, ...) and the machine
# that trained it; its short hash is in TRAIN_METRICS.
ENVIRONMENT_REPORT = REPORTS / "environment.json"

PLOTS = Path("plots")
TRAIN_HISTORY = PLOTS / "train_history.csv"
PREDICTIONS = PLOTS / "predictions.csv"
CLASS_DISTRIBUTION = PLOTS / "class_distribution.csv"
GRADCAM_DIR = PLOTS / "gradcam"
# grids/<Class>_{correct,wrong}.png (DVC image plots), overlays/<Class>/{correct,wrong}/*.png
GRADCAM_METHODS = GRADCAM_DIR / "methods"  # <Class>_{correct,wrong}.png: methods side by side
# One file per chart (long tables for the templates in .dvc/plots/; cxr.evaluation.dvc_plots).
ROC = PLOTS / "roc.csv"  # class, curve, point, fpr, tpr
PR = PLOTS / "precision_recall.csv"  # class, curve, point, recall, precision
RELIABILITY = PLOTS / "reliability.csv"  # probabilities, bin_low, bin_high, confidence, ...
PER_CLASS = PLOTS / "per_class.csv"  # long table for the per-class bar chart
SUBGROUPS = PLOTS / "subgroups.csv"  # column, group, bar, metric, value, low, high, images
EXTERNAL_REPORT = REPORTS / "external.json"  # evaluate.external: each folder's results

# Stage `embed` (cxr.evaluation.embeddings): the t-SNE map of penultimate-layer embeddings.
EMBEDDINGS = PLOTS / "embeddings.csv"  # split, image, class, predicted, outcome, x, y
EMBEDDINGS_REPORT = REPORTS / "embeddings.json"
# Stage `defer` (cxr.evaluation.deferral): selective prediction, referring low-confidence images.
RISK_COVERAGE = PLOTS / "risk_coverage.csv"  # curve, point, coverage, risk, threshold
CONFORMAL_CURVE = PLOTS / "conformal.csv"  # alpha, target_coverage, coverage, mean_set_size
DEFERRAL_METRICS = METRICS / "deferral.json"
DEFERRAL_REPORT = REPORTS / "deferral.json"
# The threshold cxr-predict applies: beside the model it belongs to (its sha256 inside).
DEFERRAL_RULE = Path("models/deferral.json")
# Stage `audit` (cxr.evaluation.audit): occlusion of the lung field, embedding probes.
AUDIT_REPORT = REPORTS / "audit.json"
AUDIT_METRICS = METRICS / "audit.json"
AUDIT_PLOT = PLOTS / "audit.csv"  # condition, class, bar, value
AUDIT_FIGURE = PLOTS / "audit.png"


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

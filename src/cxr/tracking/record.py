"""What each stage's results become in its MLflow run, so a person can read the run page.

- Metrics are named by the split they were measured on (`train/loss`, `val/balanced_accuracy`,
  `test/macro/f1`); per-epoch values are series (step = epoch) and never also logged as single
  values. Counts (images, support, resamples) are not metrics: they are in the datasets'
  profiles and in tables.
- Per-class results and class counts are logged as CSV tables, which the UI shows as tables;
  full stage reports are artifacts under a folder per stage (data/, training/, evaluation/,
  gradcam/).
- The splits are logged as MLflow datasets: name, the DVC hash of the output holding them (from
  dvc.lock) as digest, and their folder as source.

Every function takes the stage's `PipelineRun`, so a tracking outage is absorbed there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.core import layout
from cxr.tracking.logger import PipelineRun

# Report keys that are counts or settings rather than measurements: never logged as metrics.
COUNT_KEYS = frozenset(
    {"support", "resamples", "test_images", "images", "images_with_masks", "bins"}
    | {"confidence_level", "steps", "accepted", "referred", "accepted_correct"}
)
# Report sections logged as a table instead of a metric per cell.
# Logged as tables or files, not metrics (group names such as "<40" or "80+" are no metric
# names MLflow accepts, and there are dozens of them).
TABLE_KEYS = frozenset({"per_class", "subgroups", "confounding"})

# Artifact folders, one per stage that writes some.
DATA_FOLDER, TRAINING_FOLDER, EVALUATION_FOLDER, GRADCAM_FOLDER = (
    "data",
    "training",
    "evaluation",
    "gradcam",
)
EMBEDDINGS_FOLDER, DEFERRAL_FOLDER, AUDIT_FOLDER = "embeddings", "deferral", "audit"


def epoch_metric_name(key: str) -> str:
    """EpochStats field → metric name: `train_loss` → `train/loss`, `val_macro_f1` →
    `val/macro_f1`; settings and speed of the training pass (`lr`) → `train/lr`."""
    split, _, rest = key.partition("_")
    return f"{split}/{rest}" if split in ("train", "val") and rest else f"train/{key}"


def epoch_metrics(stats: Mapping[str, float]) -> tuple[int, dict[str, float]]:
    """One epoch's row (EpochStats.as_dict, or a train_history.csv row) → (step, metrics)."""
    row = dict(stats)
    epoch = int(row.pop("epoch"))
    return epoch, {epoch_metric_name(k): float(v) for k, v in row.items()}


def log_epoch(run: PipelineRun, stats: Mapping[str, float]) -> None:
    """One epoch's numbers as series (step = epoch), its throughput included."""
    step, metrics = epoch_metrics(stats)
    run.log_metrics(metrics, step=step)


def environment_tags(fingerprint: Mapping[str, Any]) -> dict[str, str]:
    """The environment fingerprint (reports/environment.json) as tags a run list can show:
    its hash, the mode, torch, the kernels or GPU in use, the threads and the CPU."""
    decides, machine = fingerprint["decides"], fingerprint["machine"]
    kernels = decides.get("kernels") or decides.get("cuda") or {}
    return {
        "cxr.environment": fingerprint["hash"],
        "cxr.environment.reproducible": str(decides["reproducible"]).lower(),
        "cxr.environment.torch": decides["versions"]["torch"],
        "cxr.environment.kernels": ", ".join(f"{k} {v}" for k, v in kernels.items()),
        "cxr.environment.threads": str(decides["threads"]),
        "cxr.environment.cpu": machine["cpu"],
    }


def report_metrics(report: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The measurements of a nested report as `prefix/a/b` metrics, without counts, settings
    or the sections logged as tables."""
    metrics: dict[str, float] = {}
    for key, value in report.items():
        if key in COUNT_KEYS or key in TABLE_KEYS:
            continue
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            metrics.update(report_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            metrics[name] = float(value)
    return metrics


def per_class_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """A report's per_class section → one row per class."""
    rows = [{"class": name, **values} for name, values in report.get("per_class", {}).items()]
    return pd.DataFrame(rows)


def class_counts_table() -> pd.DataFrame:
    """Images per class in each pipeline step, from whichever stage reports exist yet."""
    columns: dict[str, dict[str, int]] = {}
    download = _read(layout.DOWNLOAD_REPORT)
    if download:
        columns["raw"] = download.get("classes", {})
        columns["masks"] = download.get("masks", {})
    for split, counts in (_read(layout.DATA_REPORT) or {}).get("splits", {}).items():
        columns[split] = counts
    augment = _read(layout.AUGMENT_REPORT)
    if augment:
        columns["train_augmented"] = augment.get("after", {})
    if not columns:
        return pd.DataFrame()
    table = pd.DataFrame(columns).fillna(0).astype(int)
    return table.rename_axis("class").reset_index()


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


# The splits each stage reads, as MLflow datasets: name → (folder, DVC output whose hash
# in dvc.lock is the digest, context).
DATASETS = {
    "train": (layout.AUGMENTED_TRAIN, layout.AUGMENTED, "training"),
    "val": (layout.SPLIT / "val", layout.SPLIT, "validation"),
    "test": (layout.SPLIT / "test", layout.SPLIT, "test"),
}
STAGE_DATASETS = {"train": ("train", "val"), "evaluate": ("test",)}


def dataset_frame(folder: Path) -> pd.DataFrame:
    """One row per image of a split folder (<Class>/<file>): file and class."""
    rows = [
        {"file": path.relative_to(folder).as_posix(), "class": path.parent.name}
        for path in sorted(folder.glob("*/*"))
        if path.is_file()
    ]
    return pd.DataFrame(rows, columns=["file", "class"])


def log_datasets(run: PipelineRun, names: tuple[str, ...], lock_hashes: dict[str, str]) -> None:
    """Log the named splits as MLflow datasets; `lock_hashes` maps output paths to dvc.lock's
    md5 (a split that DVC has not hashed yet gets the digest MLflow computes itself)."""
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for name in names:
        folder, output, context = DATASETS[name]
        if not folder.is_dir():
            continue
        dataset = from_pandas(
            dataset_frame(folder),
            source=_source(folder),
            targets="class",
            name=name,
            digest=lock_hashes.get(output.as_posix()),
        )
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags))
    if inputs:
        run.log_inputs(inputs)


def _source(folder: Path) -> Any:
    """A local-folder dataset source. Built from JSON with its type named: resolving a plain
    path warns that it "can be interpreted in multiple ways"."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    return get_dataset_source_from_json(json.dumps({"uri": folder.as_posix()}), "local")


# What a finished stage left for the run: (report logged as metrics, metric prefix).
STAGE_REPORTS = {
    "evaluate": (layout.EVAL_REPORT, "test"),
    "gradcam": (layout.GRADCAM_REPORT, "test/gradcam"),
    "defer": (layout.DEFERRAL_REPORT, "deferral"),
    "audit": (layout.AUDIT_METRICS, "audit"),
}
STAGE_ARTIFACTS = {
    "download": (
        DATA_FOLDER,
        (layout.DOWNLOAD_REPORT, layout.MANIFEST, layout.REJECTED, layout.METADATA),
    ),
    "split": (DATA_FOLDER, (layout.DATA_REPORT,)),
    "augment": (DATA_FOLDER, (layout.AUGMENT_REPORT, layout.AUGMENTED_MANIFEST)),
    "train": (
        TRAINING_FOLDER,
        (layout.TRAIN_METRICS, layout.TRAIN_HISTORY, layout.ENVIRONMENT_REPORT),
    ),
    "evaluate": (
        EVALUATION_FOLDER,
        (
            layout.EVAL_REPORT,
            layout.PREDICTIONS,
            layout.ROC,
            layout.PR,
            layout.RELIABILITY,
            layout.SUBGROUPS,
            layout.EXTERNAL_REPORT,
        ),
    ),
    "gradcam": (GRADCAM_FOLDER, (layout.GRADCAM_REPORT,)),
    "embed": (EMBEDDINGS_FOLDER, (layout.EMBEDDINGS, layout.EMBEDDINGS_REPORT)),
    "defer": (DEFERRAL_FOLDER, (layout.DEFERRAL_REPORT, layout.RISK_COVERAGE)),
    "audit": (AUDIT_FOLDER, (layout.AUDIT_REPORT, layout.AUDIT_PLOT)),
}


def record_stage(
    run: PipelineRun, stage: str, lock_hashes: dict[str, str], backfill: bool = False
) -> None:
    """Everything `stage` left on disk, into the run: metrics by split, tables, datasets and
    its files as artifacts. Used by each stage when it ends, and with `backfill` for the
    stages before it when a run is opened later (a gradcam-only change still has the whole
    record; the train stage logs its series live, so only a backfill logs them here)."""
    if stage in ("download", "split", "augment"):
        table = class_counts_table()
        if not table.empty:
            run.log_table(table, f"{DATA_FOLDER}/class_counts.csv")
    if stage == "train":
        _record_training(run, backfill)
    if stage in STAGE_REPORTS:
        path, prefix = STAGE_REPORTS[stage]
        report = _read(path)
        if report:
            run.log_metrics(report_metrics(report, prefix))
            folder = STAGE_ARTIFACTS[stage][0]
            table = per_class_table(report)
            if not table.empty:
                run.log_table(table, f"{folder}/per_class.csv")
    if stage in STAGE_DATASETS:
        log_datasets(run, STAGE_DATASETS[stage], lock_hashes)
    folder, files = STAGE_ARTIFACTS[stage]
    for path in files:
        run.log_artifact(path, folder)


def _record_training(run: PipelineRun, backfill: bool) -> None:
    """The epoch whose weights were kept and, when backfilling, the per-epoch series."""
    if backfill and layout.TRAIN_HISTORY.is_file():
        for row in pd.read_csv(layout.TRAIN_HISTORY).to_dict("records"):
            step, metrics = epoch_metrics(row)
            run.log_metrics(metrics, step=step)
    summary = _read(layout.TRAIN_METRICS)
    if summary and "best_epoch" in summary:
        run.log_metrics({"train/best_epoch": float(summary["best_epoch"])})
    environment = _read(layout.ENVIRONMENT_REPORT)
    if environment:
        run.set_tags(environment_tags(environment))

"""Scoring the final model on external folders (`evaluate.external`): other hospitals, new
patients, a source left out of training. A high score on the test split need not travel.

A folder has the layouts `data.source` takes (`<Class>/images/*.png` or `<Class>/*.png`, with
`data.class_aliases` applied) and may hold only some of the model's classes: its metrics are
over the classes present (balanced accuracy is their mean recall; one-vs-rest AUC per present
class), with bootstrap intervals, the baselines (fitted on the train split, as for test) and
the results per subgroup where the folder has a metadata CSV (`data.metadata`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from cxr.core.config import DataConfig, EvaluateConfig
from cxr.core.errors import DataError
from cxr.core.fsio import sorted_files
from cxr.data.metadata import metadata_for, patient_groups
from cxr.data.sources import SourceError, dataset_root, detect_layout, read_metadata
from cxr.evaluation.evaluate import baselines_and_groups
from cxr.evaluation.metrics import (
    accuracy_of,
    balanced_accuracy_of,
    bootstrap_ci,
    round_probabilities,
)
from cxr.training.checkpoint import ModelCard
from cxr.training.inference import predict_logits
from cxr.training.pixels import FolderIndex, load_pixels


@dataclass(frozen=True)
class ExternalImages:
    """An external folder's images, their labels (the model's class indices) and metadata."""

    folder: Path
    files: tuple[Path, ...]
    labels: np.ndarray
    metadata: pd.DataFrame  # one row per file ("" where none), the folder's metadata CSV


def external_images(folder: Path, classes: tuple[str, ...], cfg: DataConfig) -> ExternalImages:
    """Index an external folder against the model's classes; refuse a class the model lacks."""
    if not folder.is_dir():
        raise DataError(
            f"evaluate.external: {folder} is not a folder. List folders laid out as "
            "<Class>/images/*.png or <Class>/*.png (paths relative to the project root)."
        )
    try:
        layout = detect_layout(folder, cfg.extensions, dict(cfg.class_aliases), min_classes=1)
    except SourceError as err:
        raise DataError(f"evaluate.external: {err}") from None
    unknown = [entry.name for entry in layout if entry.name not in classes]
    if unknown:
        raise DataError(
            f"evaluate.external: {folder} has classes {unknown} that the model does not know "
            f"(it knows {list(classes)}). Rename or alias them (data.class_aliases), or "
            "remove those folders."
        )
    files: list[Path] = []
    labels: list[int] = []
    for entry in layout:
        found = sorted_files(entry.images, cfg.extensions)
        files += found
        labels += [classes.index(entry.name)] * len(found)
    return ExternalImages(
        folder, tuple(files), np.array(labels), _folder_metadata(folder, files, cfg)
    )


def _folder_metadata(folder: Path, files: list[Path], cfg: DataConfig) -> pd.DataFrame:
    """The folder's metadata CSV row of each file (keyed by its path in the folder)."""
    frame = read_metadata(folder, cfg)
    if frame is None:
        return pd.DataFrame(index=range(len(files)))
    root = dataset_root(folder, cfg.extensions)
    keys = [path.relative_to(root).as_posix() for path in files]
    columns = [c for c in frame.columns if c != "file"]
    rows = frame.set_index("file").reindex(keys)[columns]
    return rows.fillna("").reset_index(drop=True)


def present_metrics(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: tuple[str, ...],
    cfg: EvaluateConfig,
    patients: np.ndarray,
) -> dict:
    """Accuracy and balanced accuracy (over the classes present) with intervals resampling
    `patients` (one label per image), and per present class its recall, precision and
    one-vs-rest AUC (when two or more classes are present)."""
    y_pred = probabilities.argmax(1)
    present = [int(k) for k in np.unique(y_true)]
    boot = (cfg.bootstrap_resamples, cfg.confidence, cfg.seed, patients)

    per_class = {}
    for k in present:
        predicted_k = y_pred == k
        auc = None
        if len(present) > 1:
            auc = round(float(roc_auc_score(y_true == k, probabilities[:, k])), 6)
        per_class[classes[k]] = {
            "images": int((y_true == k).sum()),
            "recall": round(float(predicted_k[y_true == k].mean()), 6),
            "precision": (
                round(float((y_true[predicted_k] == k).mean()), 6) if predicted_k.any() else None
            ),
            "roc_auc": auc,
        }
    return {
        "images": len(y_true),
        "classes_present": [classes[k] for k in present],
        "accuracy": round(accuracy_of(y_true, probabilities), 6),
        "accuracy_ci": bootstrap_ci(y_true, probabilities, accuracy_of, *boot),
        "balanced_accuracy": round(balanced_accuracy_of(y_true, probabilities), 6),
        "balanced_accuracy_ci": bootstrap_ci(y_true, probabilities, balanced_accuracy_of, *boot),
        "per_class": per_class,
        "predicted": {
            name: int((y_pred == k).sum()) for k, name in enumerate(classes)
        },  # where the images went, including classes the folder lacks
    }


def score_external(
    model: torch.nn.Module,
    card: ModelCard,
    images: ExternalImages,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """The model's probabilities for the folder's images (rounded as predictions.csv is)."""
    pixels = load_pixels(
        images.files, card.image_size, desc=f"external {images.folder}", prep=card.prep
    )
    logits = predict_logits(model, card.arch, pixels, batch_size, device)
    return round_probabilities(torch.softmax(logits.double(), 1).numpy())


def evaluate_external(
    model: torch.nn.Module,
    card: ModelCard,
    folders: tuple[str, ...],
    root: Path,
    data_cfg: DataConfig,
    cfg: EvaluateConfig,
    train: FolderIndex,
    metadata: pd.DataFrame,
    device: torch.device,
    group_by: str,
) -> dict:
    """reports/external.json: per folder (as listed in evaluate.external), its metrics over the
    classes present, baselines (fitted on the `train` split, whose rows of the project's
    `metadata` name their sources) and subgroups, intervals resampling each folder's patients
    (its metadata column `group_by`). Every folder is indexed (and refused) before any is
    scored."""
    train_metadata = metadata_for(train.files, metadata)
    found = {
        name: external_images(_resolve(name, root), card.classes, data_cfg) for name in folders
    }
    report = {}
    for name, images in found.items():
        probabilities = score_external(model, card, images, cfg.batch_size, device)
        patients = patient_groups(images.metadata, group_by)
        entry = present_metrics(images.labels, probabilities, card.classes, cfg, patients)
        entry.update(
            baselines_and_groups(
                images.labels,
                probabilities,
                images.metadata,
                train,
                train_metadata,
                cfg,
                patients,
            )
        )
        report[name] = entry
    return report


def _resolve(name: str, root: Path) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def external_line(name: str, entry: dict) -> str:
    """One console line per external folder."""
    ci = entry["balanced_accuracy_ci"]
    bracket = f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci.get("low") is not None else ""
    recalls = ", ".join(f"{c} {v['recall']:.2f}" for c, v in entry["per_class"].items())
    return (
        f"evaluate: external {name}: {entry['images']} images, balanced accuracy "
        f"{entry['balanced_accuracy']:.3f}{bracket} over {', '.join(entry['classes_present'])}"
        f" (recall {recalls}), accuracy {entry['accuracy']:.3f}"
    )

"""Results per subgroup of the test images (source, sex, view, age band), the source-only
baseline, and the class-source confounding check.

Per-group accuracy, balanced accuracy and per-class recall come from fairlearn's `MetricFrame`,
never from hand-written group-bys; their intervals from the evaluate stage's patient bootstrap.
The source-only baseline is the best a classifier can do that sees an image's source and view
but never its pixels: on data whose classes come from different hospitals it scores high, and
the model's lead over it is what the pixels add.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import recall_score

from cxr.evaluation.metrics import accuracy_of, balanced_accuracy_of, bootstrap_ci
from cxr.training.scores import accuracy, balanced_accuracy

# A class with at least this share of its images from one source is "confounded" with it.
CONFOUNDED_SHARE = 0.9
# Metadata columns the source-only baseline may see: where the image came from and how it was
# taken, never anything about the patient's lungs.
ACQUISITION_COLUMNS = ("source", "view")
MISSING = "unknown"


def age_bands(values: pd.Series, edges: Sequence[int]) -> pd.Series:
    """Ages ("63", "63.0", "") as bands such as "<40", "40-59", "80+"; "unknown" where none."""
    ages = pd.to_numeric(values, errors="coerce")
    labels = [f"<{edges[0]}"]
    labels += [f"{low}-{high - 1}" for low, high in itertools.pairwise(edges)]
    labels.append(f"{edges[-1]}+")
    bins = [-np.inf, *edges, np.inf]
    banded = pd.cut(ages, bins=bins, labels=labels, right=False).astype(object)
    return banded.where(ages.notna(), MISSING).astype(str)


def subgroup_columns(
    metadata: pd.DataFrame, columns: Sequence[str], edges: Sequence[int]
) -> dict[str, pd.Series]:
    """Each requested column that the metadata has with at least one value, as group labels
    ("unknown" where an image has none; `age` in bands)."""
    found: dict[str, pd.Series] = {}
    for column in columns:
        if column not in metadata.columns or not (metadata[column] != "").any():
            continue
        values = metadata[column].astype(str)
        found[column] = age_bands(values, edges) if column == "age" else values.replace("", MISSING)
    return found


def _recall_of(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    def recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        if not (np.asarray(y_true) == k).any():
            return float("nan")
        return float(recall_score(y_true, y_pred, labels=[k], average="macro", zero_division=0))

    return recall


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def group_table(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: pd.Series,
    classes: tuple[str, ...],
    resamples: int,
    confidence: float,
    seed: int,
    patients: np.ndarray,
) -> pd.DataFrame:
    """One row per group: images, accuracy and balanced accuracy (with percentile bootstrap
    intervals over the group's patients, one label per image in `patients`), and each class's
    recall (NaN where the group has none of that class)."""
    metrics: dict[str, Callable] = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy}
    metrics.update({f"recall_{name}": _recall_of(k) for k, name in enumerate(classes)})
    groups = groups.rename("group").reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # recall of a class a group lacks: NaN, as intended
        frame = MetricFrame(
            metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups
        )
    table = frame.by_group.copy()
    table.insert(0, "images", groups.value_counts().reindex(table.index).to_numpy())
    # The intervals: the evaluate stage's patient bootstrap, as every other interval (fairlearn's
    # own bootstrap draws images, and re-runs scikit-learn per group and resample: minutes).
    if resamples > 0:
        hits = np.eye(len(classes))[y_pred]  # one-hot "probabilities" whose argmax is y_pred
        for metric, fn in (("accuracy", accuracy_of), ("balanced_accuracy", balanced_accuracy_of)):
            bounds = [
                bootstrap_ci(
                    y_true[rows], hits[rows], fn, resamples, confidence, seed, patients[rows]
                )
                for rows in (np.flatnonzero(groups.to_numpy() == g) for g in table.index)
            ]
            table[f"{metric}_low"] = [b.get("low") for b in bounds]
            table[f"{metric}_high"] = [b.get("high") for b in bounds]
    return table


def subgroup_report(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    metadata: pd.DataFrame,
    classes: tuple[str, ...],
    columns: Sequence[str],
    edges: Sequence[int],
    resamples: int,
    confidence: float,
    seed: int,
    patients: np.ndarray,
) -> dict:
    """{column: {group: {images, accuracy, accuracy_ci, balanced_accuracy, ..., recall}}} for
    every subgroup column the metadata has; `skipped` lists the columns it lacks. Intervals
    resample `patients` (one label per image)."""
    y_pred = probabilities.argmax(1)
    found = subgroup_columns(metadata, columns, edges)
    report: dict = {"skipped": [c for c in columns if c not in found]}
    for column, groups in found.items():
        table = group_table(y_true, y_pred, groups, classes, resamples, confidence, seed, patients)
        report[column] = {str(group): _row(row, classes) for group, row in table.iterrows()}
    return report


def _row(row: pd.Series, classes: tuple[str, ...]) -> dict:
    entry: dict = {"images": int(row["images"])}
    for metric in ("accuracy", "balanced_accuracy"):
        entry[metric] = _finite(row[metric])
        if f"{metric}_low" in row:
            entry[f"{metric}_ci"] = {
                "low": _finite(row[f"{metric}_low"]),
                "high": _finite(row[f"{metric}_high"]),
            }
    entry["recall"] = {name: _finite(row[f"recall_{name}"]) for name in classes}
    return entry


def subgroup_rows(report: dict) -> pd.DataFrame:
    """The subgroup report as a long table (plots/subgroups.csv): one row per column, group
    and metric, with its interval where there is one."""
    rows = []
    for column, groups in report.items():
        if column == "skipped":
            continue
        for group, entry in groups.items():
            for metric in ("accuracy", "balanced_accuracy"):
                ci = entry.get(f"{metric}_ci", {})
                rows.append(
                    {
                        "column": column,
                        "group": group,
                        "bar": f"{column}: {group} (n={entry['images']}) · "
                        + metric.replace("_", " "),
                        "metric": metric,
                        "value": entry[metric],
                        "low": ci.get("low"),
                        "high": ci.get("high"),
                        "images": entry["images"],
                    }
                )
    columns = ["column", "group", "bar", "metric", "value", "low", "high", "images"]
    return pd.DataFrame(rows, columns=columns)


def confounding(
    labels: np.ndarray, sources: pd.Series, classes: tuple[str, ...], share: float
) -> dict:
    """Per class, the source most of its images come from and that share; `confounded` lists
    the classes where it reaches `share` (a model can then learn the source for the class)."""
    frame = pd.DataFrame({"class": np.asarray(classes)[labels], "source": sources.to_numpy()})
    per_class: dict[str, dict] = {}
    for name, rows in frame.groupby("class", sort=True):
        counts = rows["source"].value_counts()
        per_class[str(name)] = {
            "top_source": str(counts.index[0]),
            "top_source_share": round(float(counts.iloc[0] / counts.sum()), 6),
            "sources": {str(s): int(n) for s, n in counts.items()},
        }
    confounded = [n for n, e in per_class.items() if e["top_source_share"] >= share]
    return {"threshold": share, "per_class": per_class, "confounded": confounded}


def confounding_line(report: dict) -> str | None:
    """The console warning, when some class comes (almost) entirely from one source."""
    if not report.get("confounded"):
        return None
    parts = [
        f"{report['per_class'][name]['top_source_share']:.0%} of {name} from "
        f"{report['per_class'][name]['top_source']}"
        for name in report["confounded"]
    ]
    return (
        "WARNING: class and source are confounded (train split: " + "; ".join(parts) + "). "
        "A model can learn the source instead of the disease: read the per-source results, "
        "the source-only baseline and the audit stage."
    )


def acquisition_features(metadata: pd.DataFrame) -> pd.DataFrame | None:
    """The columns the source-only baseline sees (source and view, "" as its own value), or
    None when the metadata has no source."""
    if "source" not in metadata.columns or not (metadata["source"] != "").any():
        return None
    present = [c for c in ACQUISITION_COLUMNS if c in metadata.columns]
    return metadata[present].astype(str).replace("", MISSING)


def source_only_probabilities(
    train_features: pd.DataFrame,
    train_labels: np.ndarray,
    test_features: pd.DataFrame,
    n_classes: int,
) -> np.ndarray:
    """(n_test, n_classes) predictions of a classifier that sees only the acquisition columns:
    one-hot source and view into a class-balanced logistic regression fitted on the train
    split (scikit-learn). Classes absent from train get probability 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    model = make_pipeline(
        OneHotEncoder(handle_unknown="ignore"),
        LogisticRegression(class_weight="balanced", C=100.0, max_iter=2000),
    )
    model.fit(train_features, train_labels)
    probabilities = np.zeros((len(test_features), n_classes))
    probabilities[:, model.classes_] = model.predict_proba(test_features)
    return probabilities

"""Test-split metrics, computed with scikit-learn, with seeded bootstrap confidence intervals.
The metrics the bootstrap recomputes on every resample (accuracy, balanced accuracy, macro-F1:
`cxr.training.scores`; one-vs-rest AUC: `one_vs_rest_auc`) are the project's own: scikit-learn's
values (to the bit; AUC within 1e-12, tested) at about a fiftieth of the cost, since its input
checks take ~2 ms a call.

Conventions (scikit-learn's): a confusion matrix has true classes in rows and predicted classes
in columns; precision of class k is cm[k, k] / column k, recall is cm[k, k] / row k, and
specificity is TN / (TN + FP) with TN everything outside row k and column k.

Every number here is a function of (true labels, probabilities) only, so the predictions file
(`predictions_frame`) is enough to recompute all of them (`metrics_from_predictions`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.dummy import DummyClassifier
from sklearn.metrics import (
    average_precision_score,
    cohen_kappa_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)
from sklearn.preprocessing import label_binarize

from cxr.training.scores import accuracy, balanced_accuracy, confusion_counts, macro_f1

MetricFn = Callable[[np.ndarray, np.ndarray], float]

# Digits kept for probabilities in the predictions file; metrics are computed on the rounded
# values, so recomputing them from the file gives exactly the same numbers.
PROBABILITY_DIGITS = 8


def _r(value: float) -> float | None:
    """Round for stable, readable JSON (and `dvc metrics diff`); NaN (undefined) → null."""
    value = float(value)
    return None if np.isnan(value) else round(value, 6)


def specificity(counts: np.ndarray) -> np.ndarray:
    """Per-class TN / (TN + FP) from a confusion matrix (rows true, columns predicted)."""
    total = counts.sum()
    predicted = counts.sum(axis=0)
    actual = counts.sum(axis=1)
    true_negative = total - predicted - actual + np.diag(counts)
    negatives = total - actual
    return np.divide(
        true_negative, negatives, out=np.zeros(len(counts), float), where=negatives > 0
    )


def one_vs_rest_auc(y_true: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """ROC AUC per class (class k vs the rest); NaN where a class is absent or alone.

    By ranks (the Mann-Whitney U over positives times negatives, ties counted half), which is
    scikit-learn's `roc_auc_score` to the last bit or two (tests/evaluation/test_metrics.py)
    at a fiftieth of its cost: the bootstrap calls this once per resample."""
    ranks = rankdata(probabilities, axis=0)  # average ranks of tied scores
    auc = np.full(probabilities.shape[1], np.nan)
    for k in _ks(probabilities):
        positive = np.asarray(y_true) == k
        n_pos = int(positive.sum())
        n_neg = len(positive) - n_pos
        if n_pos and n_neg:
            auc[k] = (ranks[positive, k].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return auc


def one_vs_rest_ap(y_true: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Average precision (area under the PR curve) per class; NaN where a class is absent."""
    return np.array(
        [
            _binary(average_precision_score, y_true == k, probabilities[:, k])
            for k in _ks(probabilities)
        ]
    )


def _ks(probabilities: np.ndarray) -> range:
    return range(probabilities.shape[1])


def _binary(score: Callable[..., float], positive: np.ndarray, scores: np.ndarray) -> float:
    if positive.all() or not positive.any():  # undefined: one class only
        return float("nan")
    return float(score(positive, scores))


def accuracy_of(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Accuracy of the argmax predictions (a `MetricFn`)."""
    return accuracy(y_true, probabilities.argmax(1))


def balanced_accuracy_of(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Balanced accuracy of the argmax predictions (a `MetricFn`)."""
    return balanced_accuracy(y_true, probabilities.argmax(1))


def macro_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Unweighted mean of the one-vs-rest AUCs (NaN if any class is missing)."""
    return float(np.mean(one_vs_rest_auc(y_true, probabilities)))


def resample_rows(
    rng: np.random.Generator, n: int, resamples: int, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Row indices of each bootstrap resample of `n` test images.

    Without `groups`, images are drawn with replacement. With `groups` (one label per image,
    e.g. its patient), whole groups are drawn with replacement and each brings all its images:
    a patient's images share errors, so drawing them one by one would make intervals too
    narrow (a cluster bootstrap). Groups of one image each, in image order, give exactly the
    image draws."""
    if groups is None:
        return list(rng.integers(0, n, size=(resamples, n)))
    codes, uniques = pd.factorize(np.asarray(groups))
    order = np.argsort(codes, kind="stable")  # each group's rows together, in image order
    sizes = np.bincount(codes, minlength=len(uniques))
    starts = np.cumsum(sizes) - sizes
    picks = rng.integers(0, len(uniques), size=(resamples, len(uniques)))
    return [order[_spans(starts[row], sizes[row])] for row in picks]


def _spans(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """start, start + 1, ..., start + size - 1 for each (start, size), one after another:
    the positions of the drawn groups' rows, without a Python loop over groups."""
    ends = np.cumsum(sizes)
    return np.repeat(starts - (ends - sizes), sizes) + np.arange(ends[-1] if len(ends) else 0)


def bootstrap_ci(
    y_true: np.ndarray,
    scores: np.ndarray,
    metric: MetricFn,
    resamples: int,
    confidence: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, float | int | None]:
    """Percentile bootstrap interval of `metric(y_true, scores)` over resampled test images
    (whole `groups`, e.g. patients, where given: `resample_rows`).

    Seeded, so the same inputs give the same interval. Resamples where the metric is undefined
    (an AUC on a resample missing a class) are dropped and counted.
    """
    if resamples == 0:
        return {}
    draws = resample_rows(np.random.default_rng(seed), len(y_true), resamples, groups)
    values = np.array([metric(y_true[idx], scores[idx]) for idx in draws])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"low": None, "high": None, "resamples": 0}
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return {"low": _r(low), "high": _r(high), "resamples": int(values.size)}


def paired_bootstrap_difference(
    y_true: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    metric: MetricFn,
    resamples: int,
    confidence: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, float | int | None]:
    """metric(a) - metric(b) on the test images, with a paired percentile bootstrap interval:
    both are scored on the same resampled images (whole `groups` where given), so what the
    two share cancels out. Resamples where the metric is undefined (a macro AUC on a resample
    missing a class) are dropped; `resamples` in the result counts those kept."""
    difference = metric(y_true, scores_a) - metric(y_true, scores_b)
    result: dict[str, float | int | None] = {"difference": _r(difference)}
    if resamples == 0:
        return result
    draws = resample_rows(np.random.default_rng(seed), len(y_true), resamples, groups)
    values = np.array(
        [metric(y_true[i], scores_a[i]) - metric(y_true[i], scores_b[i]) for i in draws]
    )
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {**result, "low": None, "high": None, "resamples": 0}
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return {**result, "low": _r(low), "high": _r(high), "resamples": int(values.size)}


def _averages(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probabilities: np.ndarray,
    spec: np.ndarray,
    support: np.ndarray,
) -> dict[str, dict[str, float | None]]:
    labels = list(_ks(probabilities))
    all_present = bool((support > 0).all())
    onehot = label_binarize(y_true, classes=labels)
    result = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        weights = support if average == "weighted" else None
        result[average] = {
            "precision": _r(p),
            "recall": _r(r),
            "f1": _r(f),
            "specificity": _r(np.average(spec, weights=weights)),
            "roc_auc": _r(
                roc_auc_score(
                    y_true, probabilities, multi_class="ovr", average=average, labels=labels
                )
                if all_present and len(labels) > 2
                else np.nan
            ),
            "average_precision": _r(
                average_precision_score(onehot, probabilities, average=average)
                if all_present and len(labels) > 2
                else np.nan
            ),
        }
    return result


def classification_metrics(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: tuple[str, ...],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict:
    """Everything about test-split classification quality, from labels and probabilities.

    Accuracy, balanced accuracy, Cohen's kappa; per-class and macro/weighted precision, recall,
    F1, specificity, one-vs-rest ROC AUC and average precision; bootstrap CIs for accuracy,
    macro-F1 and macro AUC, resampling whole `groups` (e.g. patients) where given.
    Predictions are the argmax of `probabilities`.
    """
    n_classes = len(classes)
    labels = list(range(n_classes))
    y_pred = probabilities.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    spec = specificity(confusion_counts(y_true, y_pred, n_classes))
    auc = one_vs_rest_auc(y_true, probabilities)
    ap = one_vs_rest_ap(y_true, probabilities)

    def macro(t: np.ndarray, p: np.ndarray) -> float:
        return macro_f1(t, p.argmax(1), n_classes)

    def ci(metric: MetricFn) -> dict:
        return bootstrap_ci(y_true, probabilities, metric, resamples, confidence, seed, groups)

    averages = _averages(y_true, y_pred, probabilities, spec, support)
    return {
        "test_images": len(y_true),
        "accuracy": _r(accuracy(y_true, y_pred)),
        "accuracy_ci": ci(accuracy_of),
        "balanced_accuracy": _r(balanced_accuracy(y_true, y_pred)),
        "balanced_accuracy_ci": ci(balanced_accuracy_of),
        "cohen_kappa": _r(cohen_kappa_score(y_true, y_pred, labels=labels)),
        **averages,
        "macro_f1_ci": ci(macro),
        "macro_roc_auc_ci": ci(macro_auc),
        "confidence_level": confidence,
        # what the intervals resample: images, or the groups (patients) they come in
        "bootstrap_units": len(y_true) if groups is None else len(set(groups)),
        "per_class": {
            name: {
                "precision": _r(precision[k]),
                "recall": _r(recall[k]),
                "f1": _r(f1[k]),
                "specificity": _r(spec[k]),
                "roc_auc": _r(auc[k]),
                "average_precision": _r(ap[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(classes)
        },
    }


# Constant or chance predictors a model must beat, fitted on the train split's labels only.
BASELINES = {
    "majority": "most_frequent",  # always the train split's largest class
    "stratified": "stratified",  # random draws at the train split's class shares (seeded)
}
HEADLINE: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
    "accuracy": lambda t, p, k: accuracy_of(t, p),
    "balanced_accuracy": lambda t, p, k: balanced_accuracy_of(t, p),
    "macro_f1": lambda t, p, k: macro_f1(t, p.argmax(1), k),
}


def baseline_probabilities(
    train_labels: np.ndarray, n_test: int, n_classes: int, strategy: str, seed: int
) -> np.ndarray:
    """(n_test, n_classes) predictions of scikit-learn's DummyClassifier fitted on the train
    labels; features play no part in it."""
    dummy = DummyClassifier(strategy=strategy, random_state=seed)
    dummy.fit(np.zeros((len(train_labels), 1)), train_labels)
    probabilities = np.zeros((n_test, n_classes))
    probabilities[:, dummy.classes_] = dummy.predict_proba(np.zeros((n_test, 1)))
    return probabilities


def verdict_of(difference: dict) -> str:
    """`beats` when the interval of a balanced-accuracy difference (model minus baseline) lies
    above 0, `loses` when the model's score is not above the baseline's, else `inconclusive`."""
    if (difference["difference"] or 0.0) <= 0:
        return "loses"
    if difference.get("low") is not None and difference["low"] > 0:
        return "beats"
    return "inconclusive"


def baseline_report(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    train_labels: np.ndarray,
    classes: tuple[str, ...],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    others: dict[str, np.ndarray] | None = None,
    groups: np.ndarray | None = None,
) -> dict:
    """The baselines' accuracy, balanced accuracy and macro-F1 (balanced accuracy with its
    interval), and the model minus the majority baseline with paired bootstrap intervals.

    `others` are further baselines' test probabilities (e.g. `source_only`, fitted elsewhere
    on the train split); the model minus each gets a paired balanced-accuracy interval and a
    verdict (`verdict_of`) under `model_minus_<name>`. Intervals resample whole `groups` (e.g.
    patients) where given.
    """
    n_classes = len(classes)
    report: dict = {}
    scores = {}
    for name, strategy in BASELINES.items():
        scores[name] = baseline_probabilities(train_labels, len(y_true), n_classes, strategy, seed)
    scores.update(others or {})
    for name in scores:
        values = {key: _r(fn(y_true, scores[name], n_classes)) for key, fn in HEADLINE.items()}
        balanced_ci = bootstrap_ci(
            y_true,
            scores[name],
            balanced_accuracy_of,
            resamples,
            confidence,
            seed,
            groups,
        )
        report[name] = {**values, "balanced_accuracy_ci": balanced_ci}
    report["majority"]["class"] = classes[int(np.bincount(train_labels).argmax())]
    differences = {
        key: paired_bootstrap_difference(
            y_true,
            probabilities,
            scores["majority"],
            lambda t, p, fn=fn: fn(t, p, n_classes),
            resamples,
            confidence,
            seed,
            groups,
        )
        for key, fn in HEADLINE.items()
    }
    verdict = verdict_of(differences["balanced_accuracy"])
    report["model_minus_majority"] = {**differences, "verdict": verdict}
    for name in others or {}:
        balanced = paired_bootstrap_difference(
            y_true,
            probabilities,
            scores[name],
            balanced_accuracy_of,
            resamples,
            confidence,
            seed,
            groups,
        )
        report[f"model_minus_{name}"] = {
            "balanced_accuracy": balanced,
            "verdict": verdict_of(balanced),
        }
    return report


def round_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """The probabilities exactly as the predictions file stores them."""
    return np.round(probabilities.astype(np.float64), PROBABILITY_DIGITS)


def patient_codes(groups: np.ndarray) -> list[str]:
    """Opaque labels for `groups` (p1, p2, ... in order of first appearance): which images
    share a patient, without the patient's id, since plots/predictions.csv goes into git."""
    return [f"p{code + 1}" for code in pd.factorize(np.asarray(groups))[0]]


def predictions_frame(
    files: list[str],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: tuple[str, ...],
    patients: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per test image: `actual`, `predicted` and one probability column per class,
    enough to recompute every metric (and what DVC's confusion plots read); with `patients`
    (one group per image) a `patient` column of opaque codes, so that `cxr-compare` can
    resample patients as the evaluate stage does."""
    frame = pd.DataFrame(
        {
            "image": files,
            "actual": [classes[k] for k in y_true],
            "predicted": [classes[k] for k in probabilities.argmax(1)],
        }
    )
    if patients is not None:
        frame["patient"] = patient_codes(patients)
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = round_probabilities(probabilities[:, k])
    return frame


def read_predictions(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(true labels, probabilities, classes) back from a predictions frame."""
    columns = [c for c in frame.columns if c.startswith("p_")]
    classes = tuple(c.removeprefix("p_") for c in columns)
    index = {name: k for k, name in enumerate(classes)}
    y_true = frame["actual"].map(index).to_numpy()
    return y_true, frame[columns].to_numpy(dtype=np.float64), classes


def read_patients(frame: pd.DataFrame) -> np.ndarray | None:
    """Each image's patient code from a predictions frame; None for files without the column
    (written before it existed)."""
    return frame["patient"].astype(str).to_numpy() if "patient" in frame.columns else None


def metrics_from_predictions(
    frame: pd.DataFrame, resamples: int, confidence: float, seed: int
) -> dict:
    """`classification_metrics` recomputed from a predictions file alone (over its patients,
    as the evaluate stage resampled them, where it has the `patient` column)."""
    y_true, probabilities, classes = read_predictions(frame)
    return classification_metrics(
        y_true, probabilities, classes, resamples, confidence, seed, read_patients(frame)
    )


def curve_frames(
    y_true: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]
) -> dict[str, dict[str, pd.DataFrame]]:
    """One-vs-rest ROC and precision-recall curves per class, as frames for DVC plots."""
    curves: dict[str, dict[str, pd.DataFrame]] = {"roc": {}, "pr": {}}
    for k, name in enumerate(classes):
        positive = y_true == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probabilities[:, k])
        precision, recall, _ = precision_recall_curve(positive, probabilities[:, k])
        curves["roc"][name] = pd.DataFrame({"fpr": np.round(fpr, 6), "tpr": np.round(tpr, 6)})
        curves["pr"][name] = pd.DataFrame(
            {"recall": np.round(recall[::-1], 6), "precision": np.round(precision[::-1], 6)}
        )
    return curves


def per_class_frame(report: dict) -> pd.DataFrame:
    """Long table (one row per class and metric) for DVC's per-class bar chart."""
    rows = [
        {"bar": f"{name} {metric}", "class": name, "metric": metric, "value": values[metric]}
        for name, values in report["per_class"].items()
        for metric in ("precision", "recall", "f1", "specificity")
    ]
    return pd.DataFrame(rows)

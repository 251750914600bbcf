"""Bootstrap intervals of the test report, computed with scikit-learn's metric functions per
resample (the baseline, as the project did until this benchmark) and with the project's own
(`cxr.training.scores`, rank AUC in `cxr.evaluation.metrics`), on one predictions file. Checks
that both give the same intervals, and prints each one's time and the ratio.

    python benchmarks/bootstrap_metrics.py [plots/predictions.csv] [--resamples 2000]

Any file the evaluate stage writes works; with its `patient` column, whole patients are drawn
as the stage draws them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from cxr.evaluation.metrics import (
    MetricFn,
    accuracy_of,
    balanced_accuracy_of,
    bootstrap_ci,
    macro_auc,
    read_patients,
    read_predictions,
)
from cxr.training.scores import macro_f1


def sklearn_metrics(n_classes: int) -> dict[str, MetricFn]:
    """The same four metrics, each a scikit-learn call per resample."""

    def auc(t: np.ndarray, p: np.ndarray) -> float:
        if len(np.unique(t)) < n_classes:
            return float("nan")  # as macro_auc: undefined when a class is missing
        return float(np.mean([roc_auc_score(t == k, p[:, k]) for k in range(n_classes)]))

    return {
        "accuracy": lambda t, p: float(accuracy_score(t, p.argmax(1))),
        "balanced_accuracy": lambda t, p: float(
            recall_score(t, p.argmax(1), labels=np.unique(t), average="macro", zero_division=0)
        ),
        "macro_f1": lambda t, p: float(
            f1_score(t, p.argmax(1), labels=range(n_classes), average="macro", zero_division=0)
        ),
        "macro_auc": auc,
    }


def own_metrics(n_classes: int) -> dict[str, MetricFn]:
    return {
        "accuracy": accuracy_of,
        "balanced_accuracy": balanced_accuracy_of,
        "macro_f1": lambda t, p: macro_f1(t, p.argmax(1), n_classes),
        "macro_auc": macro_auc,
    }


def timed(
    metrics: dict[str, MetricFn], run: Callable[[MetricFn], dict]
) -> tuple[float, dict[str, dict]]:
    start = time.perf_counter()
    intervals = {name: run(fn) for name, fn in metrics.items()}
    return time.perf_counter() - start, intervals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", nargs="?", type=Path, default=Path("plots/predictions.csv"))
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    frame = pd.read_csv(args.predictions, keep_default_na=False)
    y_true, probabilities, classes = read_predictions(frame)
    patients = read_patients(frame)

    def run(fn: MetricFn) -> dict:
        return bootstrap_ci(y_true, probabilities, fn, args.resamples, 0.95, 0, patients)

    base_s, base = timed(sklearn_metrics(len(classes)), run)
    own_s, own = timed(own_metrics(len(classes)), run)
    units = "images" if patients is None else f"{len(set(patients))} patients"
    print(f"{args.predictions}: {len(y_true)} images ({units}), {len(classes)} classes")
    print(f"{args.resamples} resamples x {len(own)} metrics (accuracy, balanced, macro-F1, AUC)")
    for name in own:
        same = "same" if own[name] == base[name] else "DIFFERENT"
        print(f"  {name:18s} [{own[name]['low']}, {own[name]['high']}]  {same} as scikit-learn")
    print(f"scikit-learn per resample: {base_s:7.2f} s")
    print(f"cxr.training.scores:       {own_s:7.2f} s   ratio {base_s / own_s:.1f}x faster")
    if own != base:
        raise SystemExit("the intervals differ from scikit-learn's")


if __name__ == "__main__":
    main()

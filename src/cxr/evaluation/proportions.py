"""Intervals for a share of test images (a coverage, the accuracy on the images kept) when the
images come in patients.

The exact (Clopper-Pearson) interval counts every film as an independent trial. A patient's
films share their outcome far more often than two patients' do (cxrmix's test split: 183
films of 127 patients), so that interval is too narrow. Korn & Graubard (1998, "Confidence
intervals for proportions with small expected number of positive counts estimated from survey
data", Survey Methodology 24) keep the exact interval's shape and replace the film count by the
effective sample size: n divided by the design effect, the cluster-robust variance of the share
over its binomial variance (never more than n). Without patients, or with one film each, the
interval is exactly Clopper-Pearson's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import beta


def _r(value: float) -> float:
    return round(float(value), 6)


def effective_size(hits: np.ndarray, groups: np.ndarray | None = None) -> float:
    """How many independent films `hits` (one bool per film) are worth, given each film's
    patient in `groups`: n over the design effect, at most n. A share of 0 or 1 has no
    variance to estimate the design effect from and counts every film (Korn & Graubard's
    convention); films of a single patient count as one."""
    n = len(hits)
    if groups is None or n == 0:
        return float(n)
    codes = pd.factorize(np.asarray(groups))[0]
    films = np.bincount(codes)
    patients = len(films)
    if patients == n:
        return float(n)
    if patients == 1:
        return 1.0
    share = float(np.mean(hits))
    if share in (0.0, 1.0):
        return float(n)
    hits_per_patient = np.bincount(codes, weights=np.asarray(hits, dtype=float))
    # the ratio estimator's cluster-robust (with-replacement) variance of the share
    variance = patients / (patients - 1) * np.sum((hits_per_patient - share * films) ** 2) / n**2
    design_effect = variance / (share * (1 - share) / n)
    return float(n / max(design_effect, 1.0))


def proportion_ci(
    hits: np.ndarray, level: float, groups: np.ndarray | None = None
) -> dict[str, Any] | None:
    """The share of True in `hits` with its Clopper-Pearson interval at `level` on the
    effective sample size (`effective_size`); None for no films."""
    n = len(hits)
    if n == 0:
        return None
    size = effective_size(hits, groups)
    successes = float(np.mean(hits)) * size
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else beta.ppf(tail, successes, size - successes + 1)
    high = 1.0 if successes == size else beta.ppf(1 - tail, successes + 1, size - successes)
    return {"low": _r(low), "high": _r(high), "effective_images": round(size, 1)}

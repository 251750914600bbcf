"""Conformal prediction sets: the classes an X-ray cannot be ruled out of, with a coverage
guarantee.

Split conformal classification (MAPIE's `SplitConformalClassifier`, prefit) calibrated on the
**val** split's probabilities — the temperature-scaled ones the defer stage already has — and
judged on the test split. At `conformal.alpha` the true class lies in the set with probability
at least 1 − alpha, for images exchangeable with val's (Angelopoulos & Bates, 2021). Scores:
`lac` (smallest sets on average), `aps` and `raps` (sets that grow with the model's
uncertainty; both include the label that crosses the quantile, so coverage is conservative
and the sets are deterministic). `mondrian` calibrates each true class on its own images, so
the guarantee holds per class, not only on average over the classes.

The guarantee needs enough calibration images: MAPIE asks for more than 1/alpha (and
1/(1 − alpha)). With fewer, the conformal quantile is infinite and the set is every class;
the report says so rather than pretend.

The calibration set (probabilities and labels) is stored in the model's rule file, so
`cxr-predict` rebuilds exactly the sets the report describes, with MAPIE again, and nothing
pickled.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from mapie.classification import SplitConformalClassifier
from mapie.conformity_scores import RAPSConformityScore
from scipy.stats import betabinom
from sklearn.base import BaseEstimator, ClassifierMixin

from cxr.core.config import ConformalConfig
from cxr.evaluation.proportions import effective_size, proportion_ci

# alpha values of the coverage-and-size curve (plots/conformal.csv)
CURVE_ALPHAS = tuple(round(a, 2) for a in np.arange(0.01, 0.305, 0.01))


class _GivenProbabilities(ClassifierMixin, BaseEstimator):
    """A fitted 'classifier' whose input is already its class probabilities: MAPIE's prefit
    mode then calibrates the model's own (calibrated) outputs, without re-running it."""

    def __init__(self, n_classes: int = 2) -> None:
        self.n_classes = n_classes

    def fit(self, X: Any = None, y: Any = None) -> _GivenProbabilities:
        self.classes_ = np.arange(self.n_classes)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(X, dtype=float)

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(X).argmax(1)


def enough_images(n: int, alpha: float) -> bool:
    """Whether MAPIE can calibrate at `alpha` on `n` images (else the set is every class)."""
    return n > 1 / alpha and n > 1 / (1 - alpha)


def _score(method: str) -> Any:
    return RAPSConformityScore() if method == "raps" else method


def _sets(
    calibration: tuple[np.ndarray, np.ndarray],
    probabilities: np.ndarray,
    alpha: float,
    method: str,
    seed: int,
) -> np.ndarray | None:
    """Boolean (images, classes) prediction sets from one (labels, probabilities)
    calibration set; None when it holds too few images for `alpha`."""
    cal_labels, cal_probabilities = calibration
    n_classes = probabilities.shape[1]
    if not enough_images(len(cal_labels), alpha):
        return None
    conformal = SplitConformalClassifier(
        _GivenProbabilities(n_classes).fit(),
        confidence_level=1 - alpha,
        conformity_score=_score(method),
        prefit=True,
        random_state=seed,  # aps/raps: random tie-breaking of the scores; raps: its penalty
    )
    with warnings.catch_warnings():
        # Mondrian calibration hands MAPIE one class at a time, which it warns about
        warnings.filterwarnings("ignore", message=".*less labels than your training.*")
        conformal.conformalize(cal_probabilities, cal_labels)
    try:
        return conformal.predict_set(probabilities)[1][:, :, 0].astype(bool)
    except ValueError as err:
        # RAPS tunes its penalty on a part of the calibration set, whose size MAPIE checks
        # only here
        if "too low" in str(err):
            return None
        raise


def checked_sets(
    calibration: tuple[np.ndarray, np.ndarray],
    probabilities: np.ndarray,
    alpha: float,
    cfg: ConformalConfig,
) -> tuple[np.ndarray, bool]:
    """Boolean (images, classes) sets at `alpha`, and whether every calibration (one, or one
    per class with `cfg.mondrian`) had enough images; where one had not, its classes are in
    every set (the conformal quantile is infinite). With `cfg.mondrian`, class k's membership
    is decided by the quantile of class k's calibration images alone."""
    cal_labels, cal_probabilities = calibration
    if not cfg.mondrian:
        sets = _sets(calibration, probabilities, alpha, cfg.method, cfg.seed)
        return (np.ones(probabilities.shape, dtype=bool), False) if sets is None else (sets, True)
    sets, complete = np.ones(probabilities.shape, dtype=bool), True
    for k in range(probabilities.shape[1]):
        own = cal_labels == k
        part = _sets((cal_labels[own], cal_probabilities[own]), probabilities, alpha, "lac", 0)
        if part is None:
            complete = False
        else:
            sets[:, k] = part[:, k]
    return sets, complete


def prediction_sets(
    calibration: tuple[np.ndarray, np.ndarray],
    probabilities: np.ndarray,
    alpha: float,
    cfg: ConformalConfig,
) -> np.ndarray:
    """The sets of `checked_sets`, alone."""
    return checked_sets(calibration, probabilities, alpha, cfg)[0]


def _r(value: float) -> float:
    return round(float(value), 6)


def _coverage(
    covered: np.ndarray, level: float, calibration: int, alpha: float, patients: np.ndarray | None
) -> dict[str, Any]:
    """Empirical coverage with its exact (Clopper-Pearson) interval and its `expected_coverage`
    judgement, both on the films' effective number given their `patients` (where known: a
    patient's films are covered or missed together more often than two patients')."""
    n = len(covered)
    share = float(covered.mean()) if n else 0.0
    size = effective_size(covered, patients)
    expected = expected_coverage(round(share * size), round(size), calibration, alpha, level)
    return {
        "images": n,
        "coverage": _r(share) if n else None,  # a class with no test film has no coverage
        "coverage_ci": proportion_ci(covered, level, patients) if n else None,
        "expected": expected,
        "holds": expected["holds"],
    }


def expected_coverage(
    covered: int, images: int, calibration: int, alpha: float, level: float
) -> dict:
    """Where `covered` of `images` falls in the coverage a split-conformal set of `calibration`
    images gives: conditional on the calibration draw, coverage is Beta(n + 1 - l, l) with
    l = floor((n + 1) alpha) (Vovk, 2012; Angelopoulos & Bates, 2021, sec. C), so the covered
    count is beta-binomial. `range` is its central `level` interval as shares; `p_value` the
    probability of covering this few or fewer; `holds` is False when that is below
    (1 - level) / 2: short of the guarantee beyond the sampling error of both the calibration
    and the test images. For conservative scores (aps, raps) and ties this errs towards
    holding."""
    lower = int(np.floor((calibration + 1) * alpha))
    if images == 0 or lower < 1:  # too few calibration images: every class, always covered
        return {"p_value": 1.0, "range": None, "holds": True}
    shape = (images, calibration + 1 - lower, lower)
    tail = (1 - level) / 2
    p_value = float(betabinom.cdf(covered, *shape))
    return {
        "p_value": _r(p_value),
        "range": {
            "low": _r(betabinom.ppf(tail, *shape) / images),
            "high": _r(betabinom.ppf(1 - tail, *shape) / images),
        },
        "holds": p_value >= tail,
    }


def set_summary(
    sets: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    alpha: float,
    level: float,
    calibration: tuple[int, ...],
    patients: np.ndarray | None = None,
) -> dict[str, Any]:
    """Coverage (with its exact interval), set sizes and the per-class view of one split's
    sets, each coverage judged against what conformal sets of this many calibration images
    give (`expected_coverage`). `calibration` holds the calibration size: one (marginal) or
    one per class (Mondrian; per-class coverage is only guaranteed then; the weakest class's
    bounds the whole). `patients`: each image's patient, where known."""
    covered = sets[np.arange(len(labels)), labels]
    size = sets.sum(1)
    summary = _coverage(covered, level, min(calibration), alpha, patients)
    summary |= {
        "target": _r(1 - alpha),
        "mean_set_size": _r(size.mean()) if len(size) else None,
        "singleton": _r((size == 1).mean()) if len(size) else None,
        "empty": _r((size == 0).mean()) if len(size) else None,
        "full": _r((size == len(classes)).mean()) if len(size) else None,
        "sizes": {str(k): int((size == k).sum()) for k in range(len(classes) + 1)},
    }
    summary["per_class"] = {}
    for k, name in enumerate(classes):
        own = labels == k
        n_k = calibration[k] if len(calibration) > 1 else calibration[0]
        own_patients = None if patients is None else patients[own]
        entry = _coverage(covered[own], level, n_k, alpha, own_patients)
        entry["mean_set_size"] = _r(size[own].mean()) if own.any() else None
        summary["per_class"][name] = entry
    return summary


def alpha_curve(
    calibration: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    cfg: ConformalConfig,
) -> pd.DataFrame:
    """plots/conformal.csv: test coverage, its target 1 − alpha and the mean set size at each
    alpha of CURVE_ALPHAS. `calibration` and `test` are (labels, probabilities)."""
    rows = []
    for alpha in CURVE_ALPHAS:
        sets = prediction_sets(calibration, test[1], alpha, cfg)
        rows.append(
            {
                "alpha": alpha,
                "target_coverage": _r(1 - alpha),
                "coverage": _r(sets[np.arange(len(test[0])), test[0]].mean()),
                "mean_set_size": _r(sets.sum(1).mean()),
            }
        )
    return pd.DataFrame(rows)


def build_section(
    cfg: ConformalConfig,
    calibration: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: tuple[str, ...],
    level: float,
    patients: np.ndarray | None = None,
) -> dict[str, Any]:
    """The `conformal` section of reports/deferral.json: settings, calibration size and
    whether it suffices, and the test split's sets summarised. `calibration` and `test` are
    (labels, probabilities); `patients`: each test image's patient, where known."""
    sets, enough = checked_sets(calibration, test[1], cfg.alpha, cfg)
    sizes = (
        tuple(int((calibration[0] == k).sum()) for k in range(len(classes)))
        if cfg.mondrian
        else (len(calibration[0]),)
    )
    return {
        "method": cfg.method,
        "alpha": cfg.alpha,
        "mondrian": cfg.mondrian,
        "calibration_images": len(calibration[0]),
        "enough_calibration_images": enough,
        "test": set_summary(sets, test[0], classes, cfg.alpha, level, sizes, patients),
    }


def rule_section(cfg: ConformalConfig, calibration: tuple[np.ndarray, np.ndarray]) -> dict:
    """What cxr-predict needs to rebuild the sets: the settings and the calibration set."""
    return {
        "method": cfg.method,
        "alpha": cfg.alpha,
        "mondrian": cfg.mondrian,
        "seed": cfg.seed,
        "calibration_labels": [int(y) for y in calibration[0]],
        "calibration_probabilities": np.round(calibration[1], 6).tolist(),
    }


def sets_from_rule(rule: dict[str, Any], probabilities: np.ndarray) -> np.ndarray:
    """The sets of `probabilities` (already temperature-scaled) under a stored rule."""
    cfg = ConformalConfig(
        method=rule["method"], alpha=rule["alpha"], mondrian=rule["mondrian"], seed=rule["seed"]
    )
    calibration = (
        np.asarray(rule["calibration_labels"], dtype=int),
        np.asarray(rule["calibration_probabilities"], dtype=float),
    )
    return prediction_sets(calibration, probabilities, cfg.alpha, cfg)


def lines(section: dict[str, Any]) -> list[str]:
    """Console lines: the headline, and a WARNING where coverage falls short of its target or
    the calibration set is too small for the guarantee."""
    test = section["test"]
    ci = test["coverage_ci"]
    shown = [
        f"conformal ({section['method']}, alpha {section['alpha']:g}"
        + (", per class" if section["mondrian"] else "")
        + f"): test coverage {test['coverage']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] "
        f"(target {test['target']:.2f}), mean set size {test['mean_set_size']:.2f}, "
        f"singletons {test['singleton']:.2f}, every class {test['full']:.2f}"
    ]
    if not section["enough_calibration_images"]:
        shown.append(
            f"WARNING: conformal: {section['calibration_images']} val images"
            + (" (split by class)" if section["mondrian"] else "")
            + f" are too few for alpha {section['alpha']:g} (MAPIE needs more than "
            f"{1 / section['alpha']:.0f}"
            + (
                ", and raps more again, as it tunes its penalty on a fifth of them"
                if section["method"] == "raps"
                else ""
            )
            + "): their classes are in every set"
        )
    if not test["holds"]:
        shown.append(
            "WARNING: conformal: test coverage is below what sets calibrated on this many val "
            "images give, beyond sampling error: val and test do not look exchangeable (a "
            "shift between the splits?)"
        )
    short = [name for name, entry in test["per_class"].items() if not entry["holds"]]
    if short:
        shown.append(
            f"WARNING: conformal: coverage of {', '.join(short)} is below target beyond "
            "sampling error"
            + (
                ""
                if section["mondrian"]
                else " (the guarantee is on average over classes; conformal.mondrian: true gives "
                "one per class)"
            )
        )
    return shown

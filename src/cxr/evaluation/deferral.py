"""Selective prediction: when should the model refer an X-ray to a radiologist?

The model keeps an image when its calibrated top-class confidence reaches a threshold and
refers it otherwise. The threshold is chosen on the **val** split (never on test): the lowest
one — the highest coverage — whose error on the kept images (the selective risk) is at most
`deferral.target_risk`, judged by the observed rate (`bound: empirical`) or by its one-sided
Clopper-Pearson upper bound at `deferral.confidence` (`bound: upper`). Confidences are
calibrated with the temperature the evaluate stage fitted on val (`deferral.calibrated`).

On the test split, from plots/predictions.csv, it reports the coverage, the selective risk and
accuracy at that threshold (exact binomial intervals on the films' effective number, where the
file names patients: cxr.evaluation.proportions), next to the error of answering
everything, and the risk-coverage curve with its area (AURC, Geifman et al., 2019: the mean
selective risk over all coverages; lower is better), the oracle's AURC (all errors ranked
last) and the excess E-AURC = AURC - oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import beta

from cxr.core.config import DeferralConfig
from cxr.core.errors import CxrError
from cxr.core.fsio import read_json, sha256_file
from cxr.evaluation.calibration import scale_probabilities
from cxr.evaluation.proportions import proportion_ci

REFER, ACCEPT = "refer", "accept"


class DeferralError(CxrError, ValueError):
    """A deferral rule that cannot be applied (missing, or for another model)."""


def _r(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def confidences(probabilities: np.ndarray, temperature: float | None) -> np.ndarray:
    """Top-class confidence, temperature-scaled when a temperature is given."""
    if temperature is not None:
        probabilities = scale_probabilities(probabilities, temperature)
    return probabilities.max(1)


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """Selective risk at every distinct threshold (accept confidence >= threshold), from the
    highest threshold (fewest images kept) to the lowest (all kept)."""
    order = np.argsort(-confidence, kind="stable")
    sorted_conf, errors = confidence[order], np.cumsum(~correct[order])
    kept = np.arange(1, len(order) + 1)
    # the last image of each run of equal confidences: a threshold keeps all of them or none
    last = np.r_[sorted_conf[1:] != sorted_conf[:-1], True]
    return pd.DataFrame(
        {
            "threshold": sorted_conf[last],
            "accepted": kept[last],
            "errors": errors[last],
            "coverage": kept[last] / len(order),
            "risk": errors[last] / kept[last],
        }
    )


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean over k = 1..N of the error among the k
    most confident images (tied confidences share the risk of their whole tie group)."""
    table = risk_coverage(confidence, correct)
    group_sizes = np.diff(np.r_[0, table["accepted"].to_numpy()])
    return float((table["risk"].to_numpy() * group_sizes).sum() / len(confidence))


def oracle_aurc(correct: np.ndarray) -> float:
    """AURC of a perfect ranking (every error less confident than every correct answer)."""
    n, wrong = len(correct), int((~correct).sum())
    kept = np.arange(1, n + 1)
    return float(np.mean(np.maximum(0, kept - (n - wrong)) / kept))


def upper_bound(errors: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound of an error rate (errors of n)."""
    if n == 0 or errors >= n:
        return 1.0
    return float(beta.ppf(confidence, errors + 1, n - errors))


@dataclass(frozen=True)
class Threshold:
    """The chosen threshold (None: no threshold meets the target, refer every image) and what
    it gives on the split it was chosen on."""

    value: float | None
    coverage: float
    risk: float | None
    risk_bound: float | None


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_risk: float, bound: str, level: float
) -> Threshold:
    """The lowest threshold (highest coverage) whose selective risk — or, with bound=upper,
    its Clopper-Pearson upper bound at `level` — is at most `target_risk`."""
    table = risk_coverage(confidence, correct)
    bounds = np.array(
        [
            upper_bound(int(e), int(n), level)
            for e, n in zip(table["errors"], table["accepted"], strict=True)
        ]
    )
    judged = bounds if bound == "upper" else table["risk"].to_numpy()
    passing = np.flatnonzero(judged <= target_risk + 1e-12)
    if not len(passing):
        return Threshold(None, 0.0, None, None)
    best = passing[-1]  # rows go from high to low threshold: the last has the most coverage
    row = table.iloc[best]
    return Threshold(float(row["threshold"]), float(row["coverage"]), row["risk"], bounds[best])


def accepted(confidence: np.ndarray, threshold: float | None) -> np.ndarray:
    """Which images the model keeps (the rest are referred)."""
    if threshold is None:
        return np.zeros(len(confidence), dtype=bool)
    return confidence >= threshold


def operating_point(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    threshold: float | None,
    temperature: float | None,
    classes: tuple[str, ...],
    level: float,
    patients: np.ndarray | None = None,
) -> dict[str, Any]:
    """Coverage and selective accuracy at `threshold`, with exact binomial intervals (over
    the films' effective number given their `patients`, where known), the selective risk, the
    error of answering everything, AURC, and per class how many images are kept."""
    confidence = confidences(probabilities, temperature)
    correct = probabilities.argmax(1) == y_true
    keep = accepted(confidence, threshold)
    kept, right = int(keep.sum()), int((keep & correct).sum())
    section: dict[str, Any] = {
        "images": len(y_true),
        "accepted": kept,
        "referred": len(y_true) - kept,
        "coverage": _r(kept / len(y_true)),
        "selective_risk": _r(1 - right / kept) if kept else None,
        "selective_accuracy": _r(right / kept) if kept else None,
        "overall_accuracy": _r(correct.mean()),
        "overall_risk": _r(1 - correct.mean()),
        "aurc": _r(aurc(confidence, correct)),
        "oracle_aurc": _r(oracle_aurc(correct)),
    }
    section["e_aurc"] = _r(section["aurc"] - section["oracle_aurc"])
    section["coverage_ci"] = proportion_ci(keep, level, patients)
    if kept:
        section["selective_accuracy_ci"] = proportion_ci(
            correct[keep], level, None if patients is None else patients[keep]
        )
    section["per_class"] = {
        name: {
            "images": int((y_true == k).sum()),
            "accepted": int((keep & (y_true == k)).sum()),
            "accepted_correct": int((keep & correct & (y_true == k)).sum()),
        }
        for k, name in enumerate(classes)
    }
    return section


def curve_table(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], target_risk: float
) -> pd.DataFrame:
    """plots/risk_coverage.csv: per split a curve labelled with its AURC, and the target risk
    as a flat line, in the long layout of the `risk_coverage` template."""
    parts = []
    for split, (confidence, correct) in curves.items():
        table = risk_coverage(confidence, correct)
        label = f"{split} · AURC {aurc(confidence, correct):.3f}"
        parts.append(
            pd.DataFrame(
                {
                    "curve": label,
                    "point": range(len(table)),
                    "coverage": table["coverage"],
                    "risk": table["risk"],
                    "threshold": table["threshold"],
                }
            )
        )
    parts.append(
        pd.DataFrame(
            {
                "curve": f"target risk {target_risk:g}",
                "point": [0, 1],
                "coverage": [0.0, 1.0],
                "risk": [target_risk, target_risk],
                "threshold": [np.nan, np.nan],
            }
        )
    )
    return pd.concat(parts, ignore_index=True).round(6)


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """metrics/deferral.json: on test, the coverage and selective accuracy at the threshold,
    AURC and, with a `conformal` section, the sets' coverage and mean size. The threshold, the
    risks (1 - those accuracies) and the rest are in reports/deferral.json: issue 13 keeps
    `dvc exp show --only-changed` within 40 columns."""
    test = report["test"]
    shown = {
        "coverage": test["coverage"],
        "selective_accuracy": test["selective_accuracy"],
        "aurc": test["aurc"],
    }
    if "conformal" in report:
        sets = report["conformal"]["test"]
        shown |= {"set_coverage": sets["coverage"], "mean_set_size": sets["mean_set_size"]}
    return shown


def rule(report: dict[str, Any], model_sha256: str, classes: tuple[str, ...]) -> dict[str, Any]:
    """models/deferral.json: what cxr-predict needs to refer images like the report says."""
    return {
        "threshold": report["threshold"],
        "temperature": report["temperature"],
        "target_risk": report["target_risk"],
        "bound": report["bound"],
        "classes": list(classes),
        "model_sha256": model_sha256,
    }


def decide(probabilities: np.ndarray, rule_: dict[str, Any]) -> tuple[float, str]:
    """One image's calibrated confidence and decision (accept or refer) under a rule."""
    confidence = float(confidences(probabilities[None], rule_["temperature"])[0])
    keep = rule_["threshold"] is not None and confidence >= rule_["threshold"]
    return confidence, ACCEPT if keep else REFER


def line(report: dict[str, Any]) -> str:
    """One console line."""
    test, threshold = report["test"], report["threshold"]
    if threshold is None:
        return (
            f"defer: no confidence threshold keeps val's error at or below "
            f"{report['target_risk']:g}: every image would be referred"
        )
    accuracy = test["selective_accuracy"]
    return (
        f"defer: threshold {threshold:.3f} (val error ≤ {report['target_risk']:g}); test "
        f"coverage {test['coverage']:.3f} ({test['accepted']} of {test['images']} kept), "
        f"accuracy on kept "
        + ("n/a" if accuracy is None else f"{accuracy:.3f}")
        + f" vs {test['overall_accuracy']:.3f} on all; AURC {test['aurc']:.3f}"
    )


def temperature_for(calibrated: bool, eval_report: dict[str, Any]) -> float | None:
    """The val-fitted temperature from reports/eval.json, or None when not calibrating."""
    if not calibrated:
        return None
    temperature = eval_report.get("calibration", {}).get("temperature")
    if temperature is None:
        raise DeferralError(
            "deferral.calibrated is true but reports/eval.json has no temperature: set "
            "evaluate.temperature_scaling: true (fits it on val), or deferral.calibrated: false"
        )
    return float(temperature)


def build_report(
    cfg: DeferralConfig,
    temperature: float | None,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: tuple[str, ...],
    patients: np.ndarray | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """reports/deferral.json and the risk-coverage table from (labels, probabilities) of val
    (where the threshold is chosen) and test (where it is judged; `patients`: each test
    image's patient, where known, for the intervals)."""
    val_conf = confidences(val[1], temperature)
    val_correct = val[1].argmax(1) == val[0]
    chosen = choose_threshold(val_conf, val_correct, cfg.target_risk, cfg.bound, cfg.confidence)
    report: dict[str, Any] = {
        "target_risk": cfg.target_risk,
        "bound": cfg.bound,
        "confidence_level": cfg.confidence,
        "temperature": temperature,
        "threshold": _r(chosen.value),
        "val": {
            "images": len(val[0]),
            "coverage": _r(chosen.coverage),
            "selective_risk": _r(chosen.risk),
            "risk_upper_bound": _r(chosen.risk_bound),
            "aurc": _r(aurc(val_conf, val_correct)),
        },
        "test": operating_point(
            test[0], test[1], chosen.value, temperature, classes, cfg.confidence, patients
        ),
    }
    test_conf = confidences(test[1], temperature)
    curves = {
        "test": (test_conf, test[1].argmax(1) == test[0]),
        "val": (val_conf, val_correct),
    }
    return report, curve_table(curves, cfg.target_risk)


def load_rule(path: Path | None, model_path: Path) -> dict[str, Any] | None:
    """The deferral rule for the model at `model_path`: `path` (which must exist) or, when
    None, `deferral.json` beside the model if there is one. A rule written for another model
    (its sha256 differs) is an error: its threshold means nothing for this one."""
    explicit = path is not None
    path = path if explicit else model_path.parent / "deferral.json"
    if not path.is_file():
        if explicit:
            raise DeferralError(f"--deferral {path}: no such file; `dvc repro defer` writes it")
        return None
    try:
        found = read_json(path)
    except ValueError as err:
        raise DeferralError(f"{path}: not JSON ({err})") from None
    needed = {"threshold", "temperature", "model_sha256"}
    if not isinstance(found, dict) or not needed <= set(found):
        raise DeferralError(f"{path}: not a deferral rule of the defer stage (needs {needed})")
    if found["model_sha256"] != sha256_file(model_path):
        raise DeferralError(
            f"{path} was chosen for another model than {model_path}: re-run `dvc repro defer` "
            "for this model, or give --no-deferral"
        )
    return found

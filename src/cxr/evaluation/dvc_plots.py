"""The data files DVC draws (dvc.yaml `plots:`), in the long layout the project's own Vega-Lite
templates in .dvc/plots/ read: one file per chart, one row per point, a column naming the line.

One chart per kind rather than one per class: the classes are then compared on shared axes,
and each line's legend entry carries its class and its area (AUC or average precision), which
a per-file chart title in dvc.yaml cannot (titles there are static).
"""

from __future__ import annotations

import pandas as pd

# What each curve kind's legend reports, from the per-class section of metrics' report.
CURVE_AREAS = {"roc": ("roc_auc", "AUC"), "pr": ("average_precision", "AP")}


def curve_label(name: str, area: float | None, short: str) -> str:
    """`COVID · AUC 0.973`; `n/a` where the area is undefined (class absent from the split)."""
    return f"{name} · {short} {'n/a' if area is None else f'{area:.3f}'}"


def curve_labels(per_class: dict[str, dict], curves: dict, kind: str) -> dict[str, str]:
    """The legend label of each class's curve, by class."""
    key, short = CURVE_AREAS[kind]
    return {name: curve_label(name, per_class.get(name, {}).get(key), short) for name in curves}


def curves_table(
    curves: dict[str, pd.DataFrame], per_class: dict[str, dict], kind: str
) -> pd.DataFrame:
    """{class: frame of one curve} → one long frame: class, curve (legend label), point (the
    order along the curve, which the templates draw by) and the curve's own columns."""
    labels = curve_labels(per_class, curves, kind)
    parts = []
    for name, frame in curves.items():
        part = frame.reset_index(drop=True)
        part.insert(0, "point", range(len(part)))
        part.insert(0, "curve", labels[name])
        part.insert(0, "class", name)
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def reliability_long(tables: dict[str, pd.DataFrame], temperature: float | None) -> pd.DataFrame:
    """{uncalibrated, temperature_scaled} bins → one frame with a `probabilities` column naming
    the set (the temperature in the scaled set's name, so the legend says what was applied)."""
    names = {"uncalibrated": "uncalibrated"}
    if temperature is not None:
        names["temperature_scaled"] = f"temperature-scaled (T = {temperature:.3g})"
    parts = [
        table.assign(probabilities=names.get(kind, kind))[["probabilities", *table.columns]]
        for kind, table in tables.items()
    ]
    return pd.concat(parts, ignore_index=True)

"""`cxr-compare`: compare finished experiments from their saved test predictions.

Each experiment (a DVC experiment name, a git revision, `workspace`, or `NAME=path.csv`) is
read from its plots/predictions.csv — the evaluate stage's one row per test image — and all
must hold the same test images with the same labels (the same split), or the comparison
stops naming the ones that differ. Then:

- per model: accuracy, balanced accuracy and macro one-vs-rest AUC, each with a seeded
  percentile bootstrap interval over patients where every file has the evaluate stage's
  `patient` column and they group the images alike (a patient's films are drawn together, as
  in the evaluate stage), else over images;
- per pair: the exact McNemar test of accuracy (a two-sided binomial test on the images that
  exactly one of the two gets right), its p-value Holm-adjusted over all pairs, and paired
  bootstrap intervals of the differences in balanced accuracy and macro AUC (both models
  scored on the same resampled images);
- a difference is called real when the Holm-adjusted McNemar p is below `--alpha` (accuracy)
  or the interval of the difference excludes 0 (balanced accuracy, macro AUC); over patients
  accuracy is judged by its paired interval too, since McNemar counts images as independent.

Writes `--out` (default comparison/): comparison.json, models.csv, pairs.csv and
comparison.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from scipy.stats import binomtest

from cxr.core import layout
from cxr.core.errors import CxrError
from cxr.core.fsio import save_figure, write_csv, write_json
from cxr.evaluation.metrics import (
    accuracy_of,
    balanced_accuracy_of,
    bootstrap_ci,
    macro_auc,
    paired_bootstrap_difference,
    read_patients,
    read_predictions,
)

PREDICTIONS = layout.PREDICTIONS.as_posix()
WORKSPACE = "workspace"


class CompareError(CxrError, ValueError):
    """Experiments that cannot be compared (missing, or not on the same test split)."""


# metric name -> f(labels, probabilities)
METRICS = {
    "accuracy": accuracy_of,
    "balanced_accuracy": balanced_accuracy_of,
    "macro_auc": macro_auc,
}
DIFFERENCES = ("balanced_accuracy", "macro_auc")  # paired bootstrap of the difference


@dataclass(frozen=True)
class Predictions:
    """One experiment's test predictions."""

    name: str
    images: tuple[str, ...]
    y_true: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]
    params: dict[str, Any]
    patients: np.ndarray | None = None  # opaque patient codes, where the file has them


# ---------------------------------------------------------------- statistics


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | int]:
    """Exact McNemar test: b = images only A gets right, c = only B; under H0 each of the
    b + c discordant images is equally likely either way, so p is the two-sided binomial
    probability of a split at least as uneven as min(b, c) : max(b, c)."""
    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"only_a_correct": b, "only_b_correct": c, "p_value": min(1.0, p)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (m - rank) * p_values[index])
        adjusted[index] = min(1.0, running)
    return [float(v) for v in adjusted]


def shared_patients(runs: list[Predictions]) -> tuple[np.ndarray | None, str]:
    """The patients every run's intervals resample, or None (resample images) and why."""
    lacking = [run.name for run in runs if run.patients is None]
    if lacking:
        return None, f"no patient column in the predictions of {', '.join(lacking)}"
    first = pd.factorize(runs[0].patients)[0]
    for run in runs[1:]:
        if not np.array_equal(pd.factorize(run.patients)[0], first):
            return None, f"{run.name} and {runs[0].name} group the images into patients unalike"
    if len(set(runs[0].patients)) == len(runs[0].patients):
        return None, "no two test images share a patient"  # the same draws either way
    return runs[0].patients, ""


def model_table(
    runs: list[Predictions],
    resamples: int,
    confidence: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per model: each metric with its bootstrap interval (over `groups`, e.g.
    patients, where given)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"model": run.name}
        for metric, fn in METRICS.items():
            ci = bootstrap_ci(
                run.y_true, run.probabilities, fn, resamples, confidence, seed, groups
            )
            row[metric] = round(fn(run.y_true, run.probabilities), 6)
            row[f"{metric}_low"], row[f"{metric}_high"] = ci.get("low"), ci.get("high")
        rows.append(row)
    return pd.DataFrame(rows)


def pair_table(
    runs: list[Predictions],
    resamples: int,
    confidence: float,
    seed: int,
    alpha: float,
    groups: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per pair (A, B): McNemar (raw and Holm-adjusted p), and A - B with a paired
    bootstrap interval (over `groups` where given) for balanced accuracy and macro AUC;
    `verdict` lists the real ones."""
    rows = []
    for a, b in itertools.combinations(runs, 2):
        row: dict[str, Any] = {"a": a.name, "b": b.name}
        correct_a = a.probabilities.argmax(1) == a.y_true
        correct_b = b.probabilities.argmax(1) == b.y_true
        row["accuracy_difference"] = round(float(correct_a.mean() - correct_b.mean()), 6)
        row.update(mcnemar_exact(correct_a, correct_b))
        # McNemar counts images as independent: over patients, accuracy is judged by its
        # paired interval, like the other metrics
        for metric in DIFFERENCES if groups is None else ("accuracy", *DIFFERENCES):
            diff = paired_bootstrap_difference(
                a.y_true,
                a.probabilities,
                b.probabilities,
                METRICS[metric],
                resamples,
                confidence,
                seed,
                groups,
            )
            row[f"{metric}_difference"] = diff["difference"]
            row[f"{metric}_low"], row[f"{metric}_high"] = diff.get("low"), diff.get("high")
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = holm(table["p_value"].tolist())
    table["verdict"] = [verdict(row, alpha) for row in table.to_dict("records")]
    return table


def _excludes_zero(low: float | None, high: float | None) -> bool:
    return low is not None and high is not None and (low > 0 or high < 0)


def verdict(row: dict[str, Any], alpha: float) -> str:
    """Which differences of a pair are real, in words ("no real difference" if none)."""
    found = []
    by_interval = "accuracy_low" in row  # patients resampled: no McNemar verdict
    if not by_interval and row["p_holm"] < alpha:
        better = row["a"] if row["accuracy_difference"] > 0 else row["b"]
        found.append(f"accuracy: {better} better (McNemar p_holm={row['p_holm']:.3g})")
    for metric in ("accuracy", *DIFFERENCES) if by_interval else DIFFERENCES:
        low, high = row[f"{metric}_low"], row[f"{metric}_high"]
        if _excludes_zero(low, high):
            better = row["a"] if low > 0 else row["b"]
            found.append(f"{metric}: {better} better ([{low:+.3f}, {high:+.3f}])")
    return "; ".join(found) or "no real difference"


# ---------------------------------------------------------------- reading experiments


def _git(args: list[str], root: Path) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise CompareError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def experiment_refs(root: Path) -> dict[str, str]:
    """DVC experiment name → commit, from the refs DVC keeps (refs/exps/<..>/<..>/<name>)."""
    listed = _git(["for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], root)
    refs = {}
    for line in listed.splitlines():
        commit, ref = line.split(" ", 1)
        parts = ref.split("/")
        if len(parts) == 5:  # refs/exps/<xx>/<baseline sha>/<name>; not refs/exps/exec/...
            refs[parts[-1]] = commit
    return refs


def baseline_experiments(root: Path) -> list[str]:
    """Names of the experiments `dvc exp show` lists for the current commit."""
    head = _git(["rev-parse", "HEAD"], root).strip()
    listed = _git(["for-each-ref", "--format=%(refname)", f"refs/exps/{head[:2]}/{head[2:]}"], root)
    return [line.rsplit("/", 1)[-1] for line in listed.splitlines() if line]


def read_at(spec: str, path: str, root: Path, refs: dict[str, str]) -> str:
    """The text of `path` at a revision: the workspace, an experiment or any git revision."""
    if spec == WORKSPACE:
        file = root / path
        if not file.is_file():
            raise CompareError(f"{file}: not found; run `dvc repro` first")
        return file.read_text()
    revision = refs.get(spec, spec)
    try:
        return _git(["show", f"{revision}:{path}"], root)
    except CompareError:
        raise CompareError(
            f"{spec}: no {path} there. Name a DVC experiment (dvc exp show), a git revision "
            f"that has run the evaluate stage, {WORKSPACE}, or NAME=path/to/predictions.csv"
        ) from None


def load(spec: str, root: Path, refs: dict[str, str]) -> Predictions:
    """One experiment's predictions (and params, when it is a revision)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        file = Path(path)
        if not file.is_file():
            raise CompareError(f"{spec}: {file} not found")
        text, params = file.read_text(), {}
    else:
        name = spec
        text = read_at(spec, PREDICTIONS, root, refs)
        params = yaml.safe_load(read_at(spec, "params.yaml", root, refs)) or {}
    frame = checked_predictions(text, spec if "=" in spec else f"{spec}: {PREDICTIONS}")
    frame = frame.sort_values("image", kind="stable").reset_index(drop=True)
    y_true, probabilities, classes = read_predictions(frame)
    patients = read_patients(frame)
    return Predictions(
        name, tuple(frame["image"]), y_true, probabilities, classes, _flatten(params), patients
    )


# Probabilities are written rounded to 8 decimals: their row sums are 1 to well within this.
SUM_TOLERANCE = 1e-4


def checked_predictions(text: str, where: str) -> pd.DataFrame:
    """A predictions file's frame, refused with the file, line and column when it is not one
    the evaluate stage could have written: empty, columns missing, a label outside the
    classes, a probability that is not a finite number in [0, 1], rows not summing to 1, or
    an image listed twice."""
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={"image": str, "actual": str, "patient": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise CompareError(f"{where}: not a predictions CSV ({str(err).strip()})") from None
    columns = [c for c in frame.columns if c.startswith("p_")]
    missing = sorted({"image", "actual"} - set(frame.columns))
    if missing or len(columns) < 2:
        raise CompareError(
            f"{where}: needs the columns image, actual and a p_<class> per class (the evaluate "
            f"stage's plots/predictions.csv); it has {list(frame.columns)}"
        )
    if frame.empty:
        raise CompareError(f"{where}: no rows")
    classes = {c.removeprefix("p_") for c in columns}
    _refuse_first(
        where,
        ~frame["actual"].isin(classes),
        frame["actual"],
        "actual",
        f"is not one of the classes {sorted(classes)}",
    )
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~np.isfinite(values) | (values < -1e-9) | (values > 1 + 1e-9)
        _refuse_first(
            where, bad, frame[column], column, "is not a probability (a number in [0, 1])"
        )
    sums = frame[columns].to_numpy(dtype=np.float64).sum(1)
    _refuse_first(
        where,
        np.abs(sums - 1) > SUM_TOLERANCE,
        pd.Series(sums),
        "p_*",
        "is the row's sum of probabilities, not 1",
    )
    if "patient" in frame.columns:
        _refuse_first(
            where,
            frame["patient"].isna(),
            frame["patient"],
            "patient",
            "is empty: every image needs its patient code (the evaluate stage writes one)",
        )
    twice = frame["image"].duplicated(keep=False)
    _refuse_first(where, twice, frame["image"], "image", "is listed more than once")
    return frame


def _refuse_first(where: str, bad: Any, values: pd.Series, column: str, problem: str) -> None:
    """A CompareError naming the first bad row's line (the header is line 1) and value."""
    rows = np.flatnonzero(np.asarray(bad))
    if len(rows):
        row = int(rows[0])
        value = values.iloc[row]
        value = value.item() if isinstance(value, np.generic) else value  # 7.5, not np.float64
        raise CompareError(
            f"{where}, line {row + 2}, column {column}: {value!r} {problem}"
            + (f" ({len(rows)} rows in all)" if len(rows) > 1 else "")
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_split(runs: list[Predictions]) -> None:
    """Every run must score the same test images with the same labels and classes."""
    first = runs[0]
    for run in runs[1:]:
        if run.classes != first.classes:
            raise CompareError(
                f"{run.name} has classes {list(run.classes)}, {first.name} {list(first.classes)}"
            )
        if run.images != first.images:
            only = set(run.images) ^ set(first.images)
            raise CompareError(
                f"{run.name} and {first.name} were not tested on the same images "
                f"({len(run.images)} vs {len(first.images)}, {len(only)} in only one): "
                "compare experiments of the same data and split params"
            )
        if not np.array_equal(run.y_true, first.y_true):
            raise CompareError(f"{run.name} and {first.name} label the same images differently")


def differing_params(runs: list[Predictions]) -> dict[str, dict[str, Any]]:
    """Per run, the params whose values differ between the runs (what was compared)."""
    known = [run for run in runs if run.params]  # NAME=file.csv runs have no params
    keys = sorted({key for run in known for key in run.params})
    differ = [k for k in keys if len({json.dumps(r.params.get(k)) for r in known}) > 1]
    return {run.name: {k: run.params[k] for k in differ if k in run.params} for run in runs}


# ---------------------------------------------------------------- output


def comparison_figure(models: pd.DataFrame, pairs: pd.DataFrame, unit: str = "image") -> Figure:
    """Left: each model's metrics with intervals. Right: each pair's differences in balanced
    accuracy and macro AUC with paired intervals, and the McNemar p of accuracy; `unit`: what
    the intervals resampled (image or patient)."""
    rows = max(len(models), len(pairs), 1)
    figure = Figure(figsize=(13, 1.6 + 0.85 * rows), layout="constrained")
    left, right = figure.subplots(1, 2)
    offsets = {"accuracy": -0.2, "balanced_accuracy": 0.0, "macro_auc": 0.2}
    for metric, offset in offsets.items():
        y = np.arange(len(models)) + offset
        value = models[metric].to_numpy(float)
        low = models[f"{metric}_low"].to_numpy(float)
        high = models[f"{metric}_high"].to_numpy(float)
        left.errorbar(value, y, xerr=[value - low, high - value], fmt="o", capsize=3, label=metric)
    left.set_yticks(range(len(models)), models["model"])
    left.set_ylim(len(models) - 0.5, -0.5)
    left.set(xlabel=f"test score ({unit}-level bootstrap interval)", title="Models")
    below = {"fontsize": 8, "loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "ncol": 3}
    left.legend(**below)  # below the axes: never over a model's points
    left.grid(axis="x", alpha=0.3)
    if not pairs.empty:
        counted = "" if unit == "image" else ", counting films"  # not the verdict then
        labels = [
            f"{a} − {b}\nMcNemar p_holm={p:.3g}{counted}"
            for a, b, p in pairs[["a", "b", "p_holm"]].values
        ]
        for metric, offset in (("balanced_accuracy", -0.15), ("macro_auc", 0.15)):
            y = np.arange(len(pairs)) + offset
            value = pairs[f"{metric}_difference"].to_numpy(float)
            low = pairs[f"{metric}_low"].to_numpy(float)
            high = pairs[f"{metric}_high"].to_numpy(float)
            right.errorbar(
                value, y, xerr=[value - low, high - value], fmt="s", capsize=3, label=metric
            )
        right.axvline(0, color="#777777", linestyle="--", linewidth=1)
        right.set_yticks(range(len(pairs)), labels, fontsize=8)
        right.set_ylim(len(pairs) - 0.5, -0.5)
        right.legend(**below)
    right.set(xlabel=f"difference A − B (paired {unit}-level bootstrap interval)", title="Pairs")
    right.grid(axis="x", alpha=0.3)
    return figure


def markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False) if not frame.empty else "(none)"


def compare(
    specs: Sequence[str],
    root: Path,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Read, check and compare; the result as the JSON written to comparison.json."""
    refs = experiment_refs(root)
    if not specs:
        specs = baseline_experiments(root)
    if len(specs) < 2:
        raise CompareError(
            f"need at least two experiments to compare, got {list(specs)}: run some "
            "(docs/methods.md: Comparing models you can believe) or name them: "
            "cxr-compare EXP_A EXP_B ..."
        )
    runs = [load(spec, root, refs) for spec in specs]
    check_same_split(runs)
    patients, why_images = shared_patients(runs)
    models = model_table(runs, resamples, confidence, seed, patients)
    pairs = pair_table(runs, resamples, confidence, seed, alpha, patients)
    units = len(runs[0].images) if patients is None else len(set(patients))
    return {
        "test_images": len(runs[0].images),
        # what the intervals resample: patients (each with all their images) or images
        "bootstrap": {
            "unit": "image" if patients is None else "patient",
            "units": units,
            "why_images": why_images,
        },
        "classes": list(runs[0].classes),
        "resamples": resamples,
        "confidence": confidence,
        "seed": seed,
        "alpha": alpha,
        "params": differing_params(runs),
        "models": models.to_dict("records"),
        "pairs": pairs.to_dict("records"),
    }


def write_outputs(result: dict[str, Any], out: Path) -> None:
    models, pairs = pd.DataFrame(result["models"]), pd.DataFrame(result["pairs"])
    write_json(out / "comparison.json", result)
    write_csv(out / "models.csv", models)
    write_csv(out / "pairs.csv", pairs)
    figure = comparison_figure(models, pairs, result["bootstrap"]["unit"])
    save_figure(figure, out / "comparison.png")


def bootstrap_line(result: dict[str, Any]) -> str:
    """What the intervals resample, in words."""
    boot, images = result["bootstrap"], result["test_images"]
    if boot["unit"] == "patient":
        return (
            f"{images} test images of {boot['units']} patients; the intervals resample "
            "patients (McNemar counts images)"
        )
    return f"{images} test images; the intervals resample images ({boot['why_images']})"


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="cxr-compare",
        description="Compare finished experiments on the same test split from their "
        "plots/predictions.csv: metrics with bootstrap intervals, exact McNemar (Holm-"
        "adjusted) for accuracy, paired bootstrap intervals of differences in balanced "
        "accuracy and macro AUC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cli.add_argument(
        "experiments",
        nargs="*",
        metavar="EXP",
        help="DVC experiment names, git revisions, 'workspace', or NAME=path/to/predictions.csv "
        "(default: every experiment of the current commit, as `dvc exp show` lists them)",
    )
    cli.add_argument("--out", type=Path, default=Path("comparison"), help="output folder")
    cli.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    cli.add_argument("--confidence", type=float, default=0.95, help="interval level")
    cli.add_argument("--alpha", type=float, default=0.05, help="significance level (Holm)")
    cli.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = compare(
            args.experiments, Path.cwd(), args.resamples, args.confidence, args.seed, args.alpha
        )
        write_outputs(result, args.out)
    except CxrError as err:
        print(f"cxr-compare: error: {err}", file=sys.stderr)
        return 2
    print(bootstrap_line(result))
    print("what differs between the experiments:")
    for name, params in result["params"].items():
        print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print("\n" + markdown(pd.DataFrame(result["models"])))
    pairs = pd.DataFrame(result["pairs"])
    columns = ["a", "b", "only_a_correct", "only_b_correct", "p_value", "p_holm", "verdict"]
    print("\n" + markdown(pairs[columns] if not pairs.empty else pairs))
    print(f"\ncxr-compare: wrote {args.out}/comparison.json, models.csv, pairs.csv, comparison.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Model comparison (cxr.evaluation.compare): McNemar and Holm against statsmodels, metrics against
scikit-learn, and `cxr-compare` on experiments committed in a real git repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from cxr.evaluation.compare import (
    Predictions,
    compare,
    holm,
    main,
    mcnemar_exact,
    model_table,
    pair_table,
)
from cxr.evaluation.metrics import (
    bootstrap_ci,
    macro_auc,
    paired_bootstrap_difference,
    predictions_frame,
)
from tests.helpers.project import git_commit, run

CLASSES = ("COVID", "Normal", "Pneumonia")


@pytest.mark.parametrize("seed", range(5))
def test_exact_mcnemar_equals_statsmodels(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    a, b = rng.random(n) < rng.uniform(0.5, 0.95), rng.random(n) < rng.uniform(0.5, 0.95)
    ours = mcnemar_exact(a, b)
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    assert ours["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)
    assert (ours["only_a_correct"], ours["only_b_correct"]) == (table[0][1], table[1][0])


def test_mcnemar_without_discordant_images_is_p_one():
    same = np.array([True, False, True])
    assert mcnemar_exact(same, same)["p_value"] == 1.0


def test_holm_equals_statsmodels():
    p = [0.01, 0.04, 0.03, 0.2, 0.001, 0.04]
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1].tolist())


def fake_runs(n: int = 90):
    """Three 'models' of known quality on one labelled test split."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    runs = []
    for name, skill in (("good", 3.0), ("fair", 1.0), ("poor", 0.0)):
        logits = rng.normal(size=(n, 3)) + skill * np.eye(3)[y]
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        images = tuple(f"img{i:03d}.png" for i in range(n))
        runs.append(Predictions(name, images, y, p, CLASSES, {"train.model": name}))
    return runs


def test_tables_match_scikit_learn_and_find_the_real_difference():
    runs = fake_runs()
    models = model_table(runs, 200, 0.95, 0).set_index("model")
    for r in runs:
        row = models.loc[r.name]
        assert row["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(r.y_true, r.probabilities.argmax(1)), abs=1e-6
        )
        auc = roc_auc_score(r.y_true, r.probabilities, multi_class="ovr", average="macro")
        assert row["macro_auc"] == pytest.approx(auc, abs=1e-6)
        assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
    pairs = pair_table(runs, 200, 0.95, 0, 0.05).set_index(["a", "b"])
    good_poor = pairs.loc[("good", "poor")]
    expected = balanced_accuracy_score(runs[0].y_true, runs[0].probabilities.argmax(1))
    expected -= balanced_accuracy_score(runs[2].y_true, runs[2].probabilities.argmax(1))
    assert good_poor["balanced_accuracy_difference"] == pytest.approx(expected, abs=1e-6)
    assert good_poor["balanced_accuracy_low"] > 0 and good_poor["p_holm"] < 0.05
    assert "good better" in good_poor["verdict"]
    assert good_poor["p_holm"] == pytest.approx(
        multipletests(pairs["p_value"].tolist(), method="holm")[1][
            list(pairs.index).index(("good", "poor"))
        ],
        abs=1e-6,
    )


def commit_predictions(project: Path, run_, message: str) -> str:
    frame = predictions_frame(list(run_.images), run_.y_true, run_.probabilities, CLASSES)
    (project / "plots").mkdir(exist_ok=True)
    frame.to_csv(project / "plots/predictions.csv", index=False)
    (project / "params.yaml").write_text(f"train:\n  model: {run_.name}\nlr: 0.001\n")
    return git_commit(project, message)


def test_command_compares_experiments_and_revisions_in_git(tmp_path: Path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    run(["git", "init", "-q", "-b", "main"], project)
    good, fair, poor = fake_runs()
    base = commit_predictions(project, good, "baseline")
    exp = commit_predictions(project, fair, "fair")
    # a DVC experiment is a ref under refs/exps/<2 hex>/<baseline sha rest>/<name>
    run(["git", "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/arch-fair", exp], project)
    run(["git", "reset", "-q", "--hard", base], project)
    commit_predictions(project, poor, "poor")
    (project / "poor.csv").write_bytes((project / "plots/predictions.csv").read_bytes())
    monkeypatch.chdir(project)
    out = tmp_path / "out"
    assert main(["arch-fair", base, "poor=poor.csv", "--out", str(out), "--resamples", "100"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert [m["model"] for m in result["models"]] == ["arch-fair", base, "poor"]
    assert result["params"]["arch-fair"] == {"train.model": "fair"}
    assert len(pd.read_csv(out / "pairs.csv")) == 3 and (out / "comparison.png").stat().st_size
    assert "McNemar" not in capsys.readouterr().err


def test_different_test_splits_are_refused(tmp_path: Path, monkeypatch, capsys):
    good, _, _ = fake_runs()
    a = predictions_frame(list(good.images), good.y_true, good.probabilities, CLASSES)
    a.to_csv(tmp_path / "a.csv", index=False)
    a.iloc[:-1].to_csv(tmp_path / "b.csv", index=False)
    monkeypatch.chdir(tmp_path)
    run(["git", "init", "-q"], tmp_path)
    assert main(["a=a.csv", "b=b.csv", "--out", str(tmp_path / "out")]) == 2
    assert "b and a were not tested on the same images (89 vs 90" in capsys.readouterr().err


def test_paired_difference_drops_resamples_without_a_class():
    good, fair, _ = fake_runs(40)
    y = good.y_true.copy()
    y[y == 2] = 0
    y[:1] = 2  # one image of class 2: many resamples miss it and have no macro AUC
    diff = paired_bootstrap_difference(
        y, good.probabilities, fair.probabilities, macro_auc, 200, 0.9, 0
    )
    assert diff["low"] is not None and diff["low"] <= diff["high"]
    assert 0 < diff["resamples"] < 200
    expected = macro_auc(y, good.probabilities) - macro_auc(y, fair.probabilities)
    assert diff["difference"] == pytest.approx(expected, abs=1e-6)


def _hostile(frame: pd.DataFrame, case: str) -> str:
    """A predictions file spoiled in one way, as CSV text."""
    frame = frame.copy()
    if case == "empty":
        return ""
    if case == "header only":
        return ",".join(frame.columns) + "\n"
    if case == "no probabilities":
        return frame[["image", "actual"]].to_csv(index=False)
    if case == "nan":
        frame.loc[3, "p_Normal"] = np.nan
    elif case == "above one":
        frame.loc[4, "p_COVID"], frame.loc[4, "p_Normal"] = 7.5, -3.0
    elif case == "not summing to one":
        frame.loc[5, "p_COVID"] = frame.loc[5, "p_COVID"] / 2
    elif case == "duplicate":
        frame.loc[6, "image"] = frame.loc[2, "image"]
    elif case == "unknown label":
        frame.loc[7, "actual"] = "Pneumothorax"
    elif case == "no patient":
        frame["patient"] = [f"p{i // 3 + 1}" for i in range(len(frame))]
        frame.loc[2, "patient"] = np.nan
    return frame.to_csv(index=False)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", r"b=b.csv: not a predictions CSV"),
        ("header only", r"b=b.csv: no rows"),
        ("no probabilities", r"b=b.csv: needs the columns image, actual and a p_<class>"),
        ("nan", r"b=b.csv, line 5, column p_Normal: nan is not a probability"),
        ("above one", r"b=b.csv, line 6, column p_COVID: 7.5 is not a probability"),
        ("not summing to one", r"b=b.csv, line 7, column p_\*: .* not 1"),
        ("duplicate", r"b=b.csv, line 4, column image: .* listed more than once \(2 rows"),
        ("unknown label", r"b=b.csv, line 9, column actual: 'Pneumothorax' is not one of"),
        ("no patient", r"b=b.csv, line 4, column patient: nan is empty"),
    ],
)
def test_spoiled_predictions_files_are_refused_naming_line_and_column(
    tmp_path: Path, monkeypatch, capsys, case: str, message: str
):
    good, _, _ = fake_runs()
    frame = predictions_frame(list(good.images), good.y_true, good.probabilities, CLASSES)
    frame.to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "b.csv").write_text(_hostile(frame, case))
    monkeypatch.chdir(tmp_path)
    run(["git", "init", "-q"], tmp_path)
    assert main(["a=a.csv", "b=b.csv", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def clustered_runs(patients: int = 30, films: int = 6) -> tuple[list[Predictions], np.ndarray]:
    """Two models whose right and wrong answers come per patient (all of a patient's films
    alike), and each film's patient."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(patients), films)
    y = np.repeat(rng.integers(0, 3, patients), films)
    runs = []
    for name, right_share in (("a", 0.8), ("b", 0.6)):
        right = np.repeat(rng.random(patients) < right_share, films)
        answer = np.where(right, y, (y + 1) % 3)
        p = np.full((len(y), 3), 0.1)
        p[np.arange(len(y)), answer] = 0.8
        images = tuple(f"img{i:03d}.png" for i in range(len(y)))
        runs.append(Predictions(name, images, y, p, CLASSES, {}))
    return runs, groups


def _write(run_: Predictions, path: Path, patients: np.ndarray | None) -> str:
    frame = predictions_frame(list(run_.images), run_.y_true, run_.probabilities, CLASSES, patients)
    frame.to_csv(path, index=False)
    return f"{run_.name}={path.name}"


def test_intervals_resample_patients_when_every_file_names_them(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    (a, b), groups = clustered_runs()
    monkeypatch.chdir(tmp_path)
    run(["git", "init", "-q"], tmp_path)
    specs = [_write(a, tmp_path / "a.csv", groups), _write(b, tmp_path / "b.csv", groups)]
    assert main([*specs, "--out", "by_patient", "--resamples", "300"]) == 0
    assert "180 test images of 30 patients; the intervals resample patients" in (
        capsys.readouterr().out
    )
    result = json.loads((tmp_path / "by_patient/comparison.json").read_text())
    assert result["bootstrap"] == {"unit": "patient", "units": 30, "why_images": ""}
    model = result["models"][0]
    expected = bootstrap_ci(a.y_true, a.probabilities, macro_auc, 300, 0.95, 0, groups)
    assert (model["macro_auc_low"], model["macro_auc_high"]) == (expected["low"], expected["high"])
    # the same files without the patient column: images drawn one by one, narrower intervals
    specs = [_write(a, tmp_path / "a.csv", None), _write(b, tmp_path / "b.csv", None)]
    assert main([*specs, "--out", "by_image", "--resamples", "300"]) == 0
    assert "the intervals resample images (no patient column in the predictions of a, b)" in (
        capsys.readouterr().out
    )
    image = json.loads((tmp_path / "by_image/comparison.json").read_text())
    assert image["bootstrap"]["unit"] == "image"

    def width(table: dict, key: str) -> float:
        return table[f"{key}_high"] - table[f"{key}_low"]

    # over patients McNemar (images as independent) no longer decides accuracy: its interval does
    assert "accuracy_low" in result["pairs"][0] and "accuracy_low" not in image["pairs"][0]
    assert "McNemar" not in result["pairs"][0]["verdict"]
    assert "accuracy: a better (McNemar" in image["pairs"][0]["verdict"]
    wide = width(result["models"][0], "balanced_accuracy")
    assert wide > 1.8 * width(image["models"][0], "balanced_accuracy")
    assert width(result["pairs"][0], "balanced_accuracy") > 1.8 * width(
        image["pairs"][0], "balanced_accuracy"
    )


def test_patients_grouped_unalike_or_all_alone_fall_back_to_images(
    tmp_path: Path, monkeypatch
) -> None:
    (a, b), groups = clustered_runs(patients=10, films=3)
    other = groups.copy()
    other[:2] = 99  # b's files put two of patient 0's films with someone new
    monkeypatch.chdir(tmp_path)
    _write(a, tmp_path / "a.csv", groups)
    _write(b, tmp_path / "b.csv", other)
    run(["git", "init", "-q"], tmp_path)
    result = compare(["a=a.csv", "b=b.csv"], tmp_path, resamples=50)
    assert result["bootstrap"]["unit"] == "image"
    assert "b and a group the images into patients unalike" in result["bootstrap"]["why_images"]
    alone = np.arange(len(groups))  # no named patients: every film its own
    _write(a, tmp_path / "a.csv", alone)
    _write(b, tmp_path / "b.csv", alone)
    result = compare(["a=a.csv", "b=b.csv"], tmp_path, resamples=50)
    assert result["bootstrap"] == {
        "unit": "image",
        "units": 30,
        "why_images": "no two test images share a patient",
    }


def test_patient_codes_keep_the_grouping_and_drop_the_ids() -> None:
    y = np.array([0, 1, 1, 2])
    p = np.eye(3)[y]
    groups = np.array(["nih/0042", "nih/0042", "ieee/7", "image 3"])
    frame = predictions_frame(["w.png", "x.png", "y.png", "z.png"], y, p, CLASSES, groups)
    assert frame["patient"].tolist() == ["p1", "p1", "p2", "p3"]
    assert "patient" not in predictions_frame(["w.png", "x.png", "y.png", "z.png"], y, p, CLASSES)

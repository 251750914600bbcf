"""DVC plots as a person sees them: the specs `dvc plots show` builds from dvc.yaml and the
project's templates (.dvc/plots/), and the pages `dvc plots show` and `dvc plots diff` write,
rendered in a real headless Chromium, offline, without console errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.browser import chromium, open_page
from tests.helpers.project import git_commit, run

CLASSES = ("COVID", "Normal", "Viral Pneumonia")


@pytest.fixture(scope="module")
def specs(evaluated_project: Path) -> dict:
    shown = json.loads(run(["dvc", "plots", "show", "--json"], evaluated_project).stdout)
    assert not shown.get("errors"), shown.get("errors")
    return shown["data"]


def spec(specs: dict, name: str) -> dict:
    (plot,) = specs[name]
    assert plot["type"] == "vega", name
    return plot["content"]


def layer_with(content: dict, mark: str) -> dict:
    marks = [layer for layer in content.get("layer", [content]) if _mark_type(layer) == mark]
    assert marks, f"no {mark} layer in {content.get('title')}"
    return marks[0]


def _mark_type(layer: dict) -> str | None:
    mark = layer.get("mark")
    return mark.get("type") if isinstance(mark, dict) else mark


def assert_numeric_order(layer: dict) -> None:
    """The line is ordered by `point`, converted to a number in place by the template (DVC
    passes it as a string, which would order 10 before 2)."""
    calculate = {"calculate": "toNumber(datum.point)", "as": "point"}
    assert calculate in layer.get("transform", []), layer.get("transform")
    assert layer["encoding"]["order"] == {"field": "point", "type": "quantitative"}


def test_roc_and_pr_are_one_chart_each_with_a_line_per_class_labelled_with_its_area(specs):
    roc = spec(specs, "plots/roc.csv")
    line = layer_with(roc, "line")
    # Straight segments between operating points, no smoothing; ordered along the curve.
    assert line["mark"]["interpolate"] == "linear"
    assert_numeric_order(line)
    assert line["encoding"]["color"]["field"] == "curve"
    # DVC hands every value over as a string: in text order "10" comes before "2" and the
    # line would jump back and forth; in the template's numeric order each class's ROC runs
    # with a non-decreasing false positive rate.
    for name in {row["class"] for row in roc["data"]["values"]}:
        rows = [row for row in roc["data"]["values"] if row["class"] == name]
        fpr = [float(r["fpr"]) for r in sorted(rows, key=lambda r: float(r["point"]))]
        assert fpr == sorted(fpr)
    diagonal = layer_with(roc, "rule")["encoding"]
    assert (diagonal["x"], diagonal["y"], diagonal["x2"], diagonal["y2"]) == (
        {"datum": 0},
        {"datum": 0},
        {"datum": 1},
        {"datum": 1},
    )
    labels = {row["curve"] for row in roc["data"]["values"]}
    assert {label.split(" · ")[0] for label in labels} == set(CLASSES)
    assert all(" · AUC " in label for label in labels)
    assert roc["encoding"]["x"]["title"].startswith("false positive rate")

    pr = spec(specs, "plots/precision_recall.csv")
    assert pr["mark"]["interpolate"] == "step-before"  # AP is the area under these steps
    assert_numeric_order(pr)
    assert all(" · AP " in row["curve"] for row in pr["data"]["values"])


def test_reliability_has_the_diagonal_and_bin_counts(specs):
    reliability = spec(specs, "plots/reliability.csv")
    assert layer_with(reliability, "rule")["encoding"]["x2"] == {"datum": 1}
    assert layer_with(reliability, "text")["encoding"]["text"]["field"] == "count"
    assert layer_with(reliability, "circle")["encoding"]["size"]["field"] == "count"
    kinds = {row["probabilities"] for row in reliability["data"]["values"]}
    assert "uncalibrated" in kinds and len(kinds) == 2


def test_confusion_axes_match_the_mlflow_figure(specs):
    import numpy as np

    from cxr.evaluation.figures import confusion_figure

    figure = confusion_figure(np.eye(3, dtype=int), CLASSES)
    mlflow_axis = figure.axes[0]
    for name in (
        "Confusion matrix, counts (test split)",
        "Confusion matrix, share of each true class (test split)",
    ):
        encoding = spec(specs, name)["spec"]["encoding"]
        # columns: predicted class, rows: true class — as in the MLflow figure
        assert encoding["x"]["field"] == "predicted"
        assert encoding["y"]["field"] == "actual"
        assert encoding["x"]["title"].lower() == mlflow_axis.get_xlabel().lower()
        assert encoding["y"]["title"].lower() == mlflow_axis.get_ylabel().lower()


def test_epoch_axes_tick_whole_epochs(specs):
    for name in ("Loss per epoch", "Accuracy per epoch", "Learning rate per epoch"):
        axis = spec(specs, name)["encoding"]["x"]["axis"]
        assert axis == {"tickMinStep": 1, "format": "d"}, name


def image_files(project: Path) -> list[str]:
    """The Grad-CAM grids, the explanation-method figures and the audit's figure: DVC's
    image plots."""
    return sorted(
        [
            p.relative_to(project).as_posix()
            for folder in ("grids", "methods")
            for p in (project / "plots/gradcam" / folder).glob("*.png")
        ]
        + ["plots/audit.png"] * (project / "plots/audit.png").is_file()
    )


def test_gradcam_grids_are_image_plots(specs, evaluated_project: Path):
    grids = image_files(evaluated_project)
    assert any("/methods/" in name for name in grids) and any("/grids/" in name for name in grids)
    images = {name for name, plots in specs.items() if plots[0]["type"] == "image"}
    assert images == set(grids)


def test_embedding_and_risk_coverage_charts(specs):
    embedding = spec(specs, "plots/embeddings.csv")["spec"]["encoding"]
    assert (embedding["color"]["field"], embedding["shape"]["field"]) == ("class", "outcome")
    assert embedding["shape"]["scale"]["range"] == ["circle", "cross"]
    risk = spec(specs, "plots/risk_coverage.csv")
    line = layer_with(risk, "line")["encoding"]
    assert line["color"]["field"] == "curve"
    assert_numeric_order(layer_with(risk, "line"))
    curves = {row["curve"] for row in risk["data"]["values"]}
    assert any(c.startswith("test · AURC ") for c in curves)
    assert any(c.startswith("target risk ") for c in curves)


def rendered(page_html: Path, tmp_path: Path, shot: str) -> tuple[int, int]:
    """Open a DVC plots page in Chromium; wait until every Vega chart has drawn; fail on any
    console error or failed request. Returns (charts drawn, images loaded)."""
    html = page_html.read_text()
    assert "cdn.jsdelivr" not in html  # the offline page template, not DVC's CDN one
    charts = html.count("vegaEmbed('#")
    with chromium() as browser:
        page = open_page(browser, page_html.as_uri(), "div")
        page.page.wait_for_function(
            f"document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= {charts}"
        )
        images = page.page.evaluate(
            "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
        )
        page.screenshot(tmp_path / shot)
        assert not page.errors, page.errors
    return charts, images


def test_plots_show_page_renders_offline_without_errors(evaluated_project: Path, tmp_path: Path):
    out = tmp_path / "show"
    run(["dvc", "plots", "show", "-o", str(out)], evaluated_project)
    charts, images = rendered(out / "index.html", tmp_path, "dvc_plots_show.png")
    # 3 epoch charts, classes, 2 confusion, ROC, PR, reliability, per class, embeddings,
    # risk-coverage
    assert charts >= 12
    assert images == len(image_files(evaluated_project))


def test_plots_diff_page_renders_both_revisions(evaluated_project: Path, tmp_path: Path):
    """Two revisions side by side: the results committed in a copy (HEAD) and the workspace."""
    project = tmp_path / "project"
    shutil.copytree(evaluated_project, project, symlinks=True)
    git_commit(project, "evaluation results")
    shown = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], project).stdout)
    roc = shown["data"]["plots/roc.csv"][0]["content"]["data"]["values"]
    assert {row["rev"] for row in roc} == {"HEAD", "workspace"}
    out = tmp_path / "diff"
    run(["dvc", "plots", "diff", "HEAD", "-o", str(out)], project)
    charts, images = rendered(out / "index.html", tmp_path, "dvc_plots_diff.png")
    assert charts >= 12
    assert images == 2 * len(image_files(project))  # each image at both revisions


def test_templates_are_the_projects(evaluated_project: Path):
    """Every template dvc.yaml names is built in or in .dvc/plots/ (a typo would silently
    fall back to nothing: DVC fails the plot)."""
    import yaml

    builtin = {"confusion", "confusion_normalized", "bar_horizontal", "simple", "linear"}
    plots = yaml.safe_load((evaluated_project / "dvc.yaml").read_text())["plots"]
    named = {
        body["template"]
        for entry in plots
        if isinstance(entry, dict)
        for body in entry.values()
        if "template" in body
    }
    own = {p.stem for p in (evaluated_project / ".dvc/plots").glob("*.json")}
    assert named <= builtin | own
    assert {"epochs", "roc", "precision_recall", "reliability", "embedding", "risk_coverage"} <= own
    assert pd.read_csv(evaluated_project / "plots/roc.csv").columns.tolist()[:3] == [
        "class",
        "curve",
        "point",
    ]

"""What DVC's charts draw, read back from Vega itself in a real Chromium: for every line
template of the project, curves of known shape (more than ten points, so text order would put
10 before 2) are drawn point by point in their own order. DVC hands every CSV value to
Vega-Lite as a string; a template that sorted by it as text drew a precision-recall curve of
AP 1.0 that fell to 0.1-0.8 (issue 23)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.helpers.browser import chromium, open_page
from tests.helpers.project import PROJECT, run

# the tests share one browser session (the `drawn` fixture): on one xdist worker
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("drawing")]

POINTS = 25  # > 10: "10" < "2" as text

# Vega's own scenegraph, after compiling the Vega-Lite spec DVC built: every line mark's
# items in the order the line is drawn, each with the data it was drawn from.
DRAWN_LINES = """async (spec) => {
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), {renderer: 'none'});
  await view.runAsync();
  const lines = [];
  const walk = (node) => {
    if (!node) return;
    if (node.marktype === 'line' && node.items && node.items.length) {
      lines.push(node.items.map((item) => item.datum));
    }
    (node.items || []).forEach(walk);
  };
  walk(view.scenegraph().root);
  return lines;
}"""


def curves() -> dict[str, pd.DataFrame]:
    """Per plot file, a curve of known shape in the long layout its template reads."""
    t = np.linspace(0, 1, POINTS).round(6)
    roc = pd.DataFrame(
        {
            "class": "A",
            "curve": "A · AUC 1.000",
            "point": range(POINTS),
            "fpr": t,
            "tpr": np.sqrt(t).round(6),
        }
    )
    # average precision 1.0: precision 1 at every recall
    pr = pd.DataFrame(
        {
            "class": "A",
            "curve": "A · AP 1.000",
            "point": range(POINTS),
            "recall": t,
            "precision": 1.0,
        }
    )
    risk = pd.DataFrame(
        {
            "curve": "test · AURC 0.100",
            "point": range(POINTS),
            "coverage": t,
            "risk": (0.2 * t).round(6),
            "threshold": (1 - t).round(6),
        }
    )
    alpha = np.round(np.arange(0.01, 0.31, 0.01), 2)[:POINTS]
    conformal = pd.DataFrame(
        {
            "alpha": alpha,
            "target_coverage": (1 - alpha).round(6),
            "coverage": (1 - alpha / 2).round(6),
            "mean_set_size": (3 - 6 * alpha).round(6),
        }
    )
    return {
        "plots/roc.csv": roc,
        "plots/precision_recall.csv": pr,
        "plots/risk_coverage.csv": risk,
        "plots/conformal.csv": conformal,
    }


def reads(entry: dict, files: set[str]) -> bool:
    """Whether a dvc.yaml plot entry draws one of `files` (by name, or through its `y`)."""
    key, body = next(iter(entry.items()))
    return key in files or bool(files & set((body or {}).get("y") or {}))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[dict]]]:
    """The drawn lines of each chart, from a git+DVC repo holding the project's templates and
    plot definitions and the curves above."""
    root = tmp_path_factory.mktemp("plots")
    shutil.copytree(PROJECT / ".dvc" / "plots", root / ".dvc" / "plots")
    (root / ".dvc" / "config").write_text("")
    plots = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["plots"]
    data = curves()
    kept = [entry for entry in plots if isinstance(entry, dict) and reads(entry, set(data))]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": kept}))
    for name, frame in data.items():
        (root / name).parent.mkdir(exist_ok=True)
        frame.to_csv(root / name, index=False)
    run(["git", "init", "-q"], root)
    shown = json.loads(run(["dvc", "plots", "show", "--json"], root).stdout)
    assert not shown.get("errors"), shown.get("errors")
    lines = {}
    with chromium() as browser:
        page = open_page(browser, (PROJECT / ".dvc/plots/page.html").as_uri(), "body")
        for entry in kept:
            name = next(iter(entry))
            (plot,) = shown["data"][name]
            lines[name] = page.page.evaluate(DRAWN_LINES, plot["content"])
        assert not page.errors, page.errors
    return lines


@pytest.mark.parametrize(
    "name, x, y",
    [
        ("plots/roc.csv", "fpr", "tpr"),
        ("plots/precision_recall.csv", "recall", "precision"),
        ("plots/risk_coverage.csv", "coverage", "risk"),
    ],
)
def test_each_line_is_drawn_in_its_points_order(drawn: dict, name: str, x: str, y: str) -> None:
    frame = curves()[name]
    (line,) = [points for points in drawn[name] if len(points) == POINTS]
    order = [int(float(point["point"])) for point in line]
    assert order == list(range(POINTS)), order  # 0, 1, 2, ..., not 0, 1, 10, 11, ...
    xs = [float(point[x]) for point in line]
    ys = [float(point[y]) for point in line]
    assert xs == pytest.approx(frame[x].tolist()) and ys == pytest.approx(frame[y].tolist())
    if name == "plots/precision_recall.csv":  # the AP 1.0 curve stays at precision 1
        assert min(ys) == 1.0


@pytest.mark.parametrize(
    "title, columns",
    [
        ("Conformal sets, coverage against alpha (test split)", ["coverage", "target_coverage"]),
        ("Conformal sets, mean size against alpha (test split)", ["mean_set_size"]),
    ],
)
def test_conformal_lines_follow_alpha(drawn: dict, title: str, columns: list[str]) -> None:
    """DVC's linear template with several y columns: one line per column, each drawn in the
    order of alpha, with the values of the file (coverage falls, size falls, as drawn)."""
    frame = curves()["plots/conformal.csv"]
    lines = [points for points in drawn[title] if len(points) == POINTS]
    fields = set()
    for line in lines:  # the template draws each line twice (the line, and its hover layer)
        alphas = [float(point["alpha"]) for point in line]
        assert alphas == pytest.approx(frame["alpha"].tolist()), alphas
        field = line[0].get("field", columns[0])
        key = "dvc_inferred_y_value" if "field" in line[0] else field
        values = [float(point[key]) for point in line]
        assert values == pytest.approx(frame[field].tolist()), field
        fields.add(field)
    assert fields == set(columns)

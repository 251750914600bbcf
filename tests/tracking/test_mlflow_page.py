"""The MLflow run as a person sees it: `mlflow server` on loopback over the store the evaluate,
gradcam, embed and defer stages wrote, the experiment and run pages opened in a real headless
Chromium."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.browser import chromium, open_page
from tests.helpers.servers import mlflow_server, search_runs


def test_experiment_opens_in_the_training_view_and_the_run_page_reads(
    evaluated_project: Path, tmp_path: Path
):
    store = f"sqlite:///{evaluated_project / 'mlflow.db'}"
    log = tmp_path / "mlflow.log"  # the server's output: a failure below quotes its errors
    with (
        mlflow_server(store, evaluated_project / "mlartifacts", log) as (base, _),
        chromium() as browser,
    ):
        (found,) = search_runs(base, "cxr-classification")
        info = found["info"]
        experiment = open_page(
            browser, f"{base}/#/experiments/{info['experiment_id']}", "text=Model training"
        )
        # MLflow 3.17 opens every experiment in its GenAI workflow until the browser's
        # "GenAI | Model training" switch is flipped once (a per-browser setting, which the
        # experiment's mlflow.experimentKind tag does not override): flip it as a user would.
        experiment.page.get_by_text("Model training", exact=True).click()
        experiment.page.wait_for_selector(f"text={info['run_name']}")
        experiment.screenshot(tmp_path / "mlflow_experiment.png")
        assert_clean(experiment, base, log)

        run = open_page(
            browser,
            f"{base}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}",
            "text=test/accuracy",
        )
        body = run.page.inner_text("body")
        for shown in ("dvc.yaml: evaluate, gradcam, embed, defer", "test", "evaluation"):
            assert shown in body, shown
        run.screenshot(tmp_path / "mlflow_run.png")
        assert_clean(run, base, log)


# The browser's notice that a ResizeObserver callback changed the layout again and the rest is
# delivered in the next frame (the HTML spec's "loop completed with undelivered notifications"):
# MLflow's metric charts resize while the run page lays out; nothing is lost or failed.
RESIZE_NOTICE = "ResizeObserver loop completed with undelivered notifications"


# The last line of a traceback, also inside an exception group's "|" frame.
ERROR_LINE = re.compile(r"[\s|]*\w+(Error|Exception): ")


def server_errors(log: Path) -> list[str]:
    """The server's answers of 500 and the last line of each traceback in its log, each once
    (Starlette prints an error inside its exception group and again as its cause): what a
    failure message needs to tell MLflow's own errors from the page's."""
    lines = log.read_text(errors="replace").splitlines()
    found = (line.strip(" |") for line in lines if " 500 " in line or ERROR_LINE.match(line))
    return list(dict.fromkeys(found))


def assert_clean(page, base: str, log: Path) -> None:
    """No console errors but two kinds: the UI's own probes of optional server features (its
    REST API answering 404), which the browser logs as "Failed to load resource", and the
    ResizeObserver notice (RESIZE_NOTICE). A failure shows the server's errors from `log`."""
    probes = [
        url
        for url in page.missing
        if url.startswith(("404 " + base + "/ajax-api/", "404 " + base + "/api/"))
    ]
    others = [url for url in page.missing if url not in probes]
    errors = [
        e for e in page.errors if not (probes and "status of 404" in e) and RESIZE_NOTICE not in e
    ]
    assert not errors and not others, (errors, others, probes, server_errors(log))

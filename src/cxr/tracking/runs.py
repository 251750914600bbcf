"""MLflow tracking: one MLflow run per pipeline run, shared by the stages that ran in it.

Stages are separate processes, so they find their common run by its tags: the hash of the
effective params (and the DVC experiment name when DVC sets one). A stage joins the newest run
with that key that it has not yet logged to; otherwise it opens a new run, logs all params and
backfills what the stages before it recorded in their metrics files (so a run opened by
`gradcam` alone, after a gradcam-only params change, still holds the training curves and test
metrics it belongs with).

The store defaults to `sqlite:///<project root>/mlflow.db` with artifacts under
`<project root>/mlartifacts`, which a plain `mlflow ui` at the project root shows;
MLFLOW_TRACKING_URI overrides it. Logging faults never stop a stage: they are collected and
reported when the stage ends. Only an unreachable store at start fails the stage (before any
work), unless `tracking.required` is false.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from cxr.core import layout
from cxr.core.config import Params
from cxr.core.errors import CxrError
from cxr.core.urls import redact, redact_url, strip_userinfo
from cxr.tracking.logger import PipelineRun
from cxr.tracking.record import record_stage

STAGES = (
    "download",
    "split",
    "augment",
    "train",
    "evaluate",
    "gradcam",
    "embed",
    "defer",
    "audit",
)

TAG_PARAMS_HASH = "cxr.params_hash"
TAG_DVC_EXP = "cxr.dvc_exp"
TAG_BASELINE = "cxr.baseline_rev"
TAG_STAGE_DONE = "cxr.stage.{}"
# MLflow's own tags for the source commit and the source (the UI's Source column).
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_TYPE = "mlflow.source.type"
# Which UI an experiment opens in: model training (runs, metrics, charts), not GenAI traces.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# The data version of a run: the md5 DVC recorded in dvc.lock for these outputs (tag: path).
DATA_VERSION_TAGS = {
    "cxr.data.raw_md5": layout.RAW.as_posix(),
    "cxr.data.split_md5": layout.SPLIT.as_posix(),
    "cxr.data.augmented_md5": layout.AUGMENTED.as_posix(),
}
DVC_LOCK = Path("dvc.lock")


class TrackingUnavailableError(CxrError, RuntimeError):
    """The MLflow store cannot be reached at the start of a stage."""


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


@contextmanager
def mlflow_environment(uri: str) -> Iterator[str]:
    """The settings MLflow reads from the environment, set while a stage talks to it and
    restored after; yields the URI to hand MLflow.

    An http(s) URI loses its `user:password@`, which go to the variables MLflow reads them from
    instead (unless already set): MLflow prints the URI it is given ("View run at ..."), so it
    must never hold a password. An unreachable server fails fast instead of after MLflow's
    minutes of retries (unless the user set those variables)."""
    defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    overrides: dict[str, str] = {}
    clean, user, password = (
        strip_userinfo(uri) if uri.startswith(("http://", "https://")) else (uri, None, None)
    )
    if user is not None:
        defaults |= {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password or ""}
        overrides["MLFLOW_TRACKING_URI"] = clean
    settings = {k: v for k, v in defaults.items() if k not in os.environ} | overrides
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield clean
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a/b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def params_dict(params: Params) -> dict[str, Any]:
    return dataclasses.asdict(params)


def params_hash(params: Params) -> str:
    canonical = json.dumps(params_dict(params), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def loggable_params(params: Params) -> dict[str, str]:
    """Dotted keys as in params.yaml (`train.model`); lists and mappings as JSON; any URL
    redacted (params are checked to hold no secret, and this holds even if that changes)."""
    return {
        key.replace("/", "."): redact(value if isinstance(value, str) else json.dumps(value))
        for key, value in flatten(params_dict(params)).items()
    }


def lock_hashes(lock: Path = DVC_LOCK) -> dict[str, str]:
    """The md5 DVC recorded in dvc.lock for each output, by path."""
    import yaml

    if not lock.is_file():
        return {}
    # libyaml's parser when PyYAML has it: the pure-Python one takes 0.2 s for a 40 kB lock,
    # and every tracked stage reads it three times. Same safe constructors either way.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    stages = (yaml.load(lock.read_text(), Loader=loader) or {}).get("stages", {})
    return {
        out["path"]: out["md5"]
        for stage in stages.values()
        for out in stage.get("outs", [])
        if "md5" in out
    }


def data_version(lock: Path = DVC_LOCK) -> dict[str, str]:
    """Tags naming the data a run used: the md5 of data outputs as recorded in dvc.lock."""
    md5s = lock_hashes(lock)
    return {tag: md5s[path] for tag, path in DATA_VERSION_TAGS.items() if path in md5s}


def baseline_commit(root: Path) -> str | None:
    """The commit the run starts from: DVC's experiment baseline, else git's HEAD."""
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _connect(uri: str, root: Path, experiment: str) -> tuple[Any, str]:
    """A client and the experiment id; raises TrackingUnavailableError if unreachable."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            if found.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
                client.set_experiment_tag(found.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            return client, found.experiment_id
        location = (root / "mlartifacts").as_uri() if _is_local(uri) else None
        kind = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
        try:
            return client, client.create_experiment(experiment, location, tags=kind)
        except MlflowException:  # created meanwhile by a parallel experiment
            return client, client.get_experiment_by_name(experiment).experiment_id
    except Exception as err:
        raise TrackingUnavailableError(
            f"MLflow tracking store {redact(uri)} is unreachable "
            f"({type(err).__name__}: {redact(str(err))}).\n"
            "Fix one of: start the tracking server; unset MLFLOW_TRACKING_URI to use the "
            "project's local store; or set tracking.required: false in params.yaml to run "
            "untracked."
        ) from None


def _find_or_create_run(
    client: Any, experiment_id: str, stage: str, tags: dict[str, str]
) -> tuple[str, bool]:
    """The id of this pipeline run's MLflow run, and whether it was created just now."""
    query = f"tags.`{TAG_PARAMS_HASH}` = '{tags[TAG_PARAMS_HASH]}'"
    if TAG_DVC_EXP in tags:
        query += f" and tags.`{TAG_DVC_EXP}` = '{tags[TAG_DVC_EXP]}'"
    candidates = client.search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    for run in candidates:  # only the newest: an older run belongs to an earlier invocation
        if TAG_STAGE_DONE.format(stage) not in run.data.tags:
            client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, False
    name = tags.get(TAG_DVC_EXP) or f"repro-{tags[TAG_PARAMS_HASH][:8]}"
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    return run.info.run_id, True


def _backfill(run: PipelineRun, stage: str) -> None:
    """Carry what the stages before `stage` recorded, when this run did not see them run."""
    hashes = lock_hashes()
    for earlier in STAGES[: STAGES.index(stage)]:
        run._guard(
            f"record of stage {earlier}", lambda s=earlier: record_stage(run, s, hashes, True)
        )


def _source_tags(client: Any, run_id: str, stage: str) -> dict[str, str]:
    """The run's source: the pipeline stages that have logged to it (`dvc.yaml: train,
    evaluate`), so the UI's Source column says what produced the run."""
    tags = client.get_run(run_id).data.tags
    ran = [s for s in STAGES if s == stage or TAG_STAGE_DONE.format(s) in tags]
    return {TAG_SOURCE_NAME: f"dvc.yaml: {', '.join(ran)}", TAG_SOURCE_TYPE: "LOCAL"}


def _run_tags(params: Params) -> dict[str, str]:
    """The tags that find this pipeline run's MLflow run (see `_find_or_create_run`)."""
    tags = {TAG_PARAMS_HASH: params_hash(params)}
    if os.environ.get("DVC_EXP_NAME"):
        tags[TAG_DVC_EXP] = os.environ["DVC_EXP_NAME"]
    return tags


def _provenance_tags() -> dict[str, str]:
    """Where the run came from: baseline commit and data version; refreshed by every stage,
    as dvc.lock gains the hashes of the stages that ran before it."""
    tags = data_version()
    commit = baseline_commit(Path.cwd())
    if commit:
        tags[TAG_BASELINE] = commit
        tags[TAG_GIT_COMMIT] = commit
    return tags


@contextmanager
def pipeline_run(stage: str, params: Params) -> Iterator[PipelineRun]:
    """Open (or join) this pipeline run's MLflow run for one stage."""
    root = layout.project_root()
    with mlflow_environment(tracking_uri(root)) as uri:
        yield from _stage_run(stage, params, root, uri)


def _stage_run(stage: str, params: Params, root: Path, uri: str) -> Iterator[PipelineRun]:
    """The body of `pipeline_run`, inside MLflow's environment."""
    try:
        client, experiment_id = _connect(uri, root, params.tracking.experiment)
    except TrackingUnavailableError as err:
        if params.tracking.required:
            raise
        print(
            f"warning: {err}\nContinuing untracked (tracking.required is false).", file=sys.stderr
        )
        client = None
    if client is None:
        yield PipelineRun(None, None, stage)
        return
    tags = _run_tags(params)
    run_id, created = _find_or_create_run(client, experiment_id, stage, tags)
    run = PipelineRun(client, run_id, stage, uri)
    run.set_tags(_provenance_tags())
    run._guard("source tags", lambda: run.set_tags(_source_tags(client, run_id, stage)))
    if created:
        run.log_params(loggable_params(params))
        _backfill(run, stage)
    status = "FAILED"
    try:
        yield run
        run._guard(f"record of stage {stage}", lambda: record_stage(run, stage, lock_hashes()))
        status = "FINISHED"
        done = TAG_STAGE_DONE.format(stage)
        run._guard(f"tag {done}", lambda: client.set_tag(run_id, done, "done"), force=True)
        print(f"mlflow: {stage} logged to run {run_id}: {run_link(uri, experiment_id, run_id)}")
    finally:
        run._guard("run status", lambda: client.set_terminated(run_id, status), force=True)
        run.report()


# Where `mlflow ui` serves a local store (its default host and port).
LOCAL_UI = "http://127.0.0.1:5000"


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page: on the tracking server itself, or, for a local store, where `mlflow ui`
    (run from the project root) shows it. The direct link opens the run (its metrics, figures
    and model), not the experiment's GenAI overview MLflow 3 opens first."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{redact_url(uri).rstrip('/')}/{page}"
    return f"`mlflow ui`, then {LOCAL_UI}/{page}"


def writer_run(stage: str, params: Params, is_writer: bool) -> AbstractContextManager[PipelineRun]:
    """The pipeline run on the process that writes (DDP rank 0); other ranks get a run that
    logs nothing and never touches MLflow."""
    return pipeline_run(stage, params) if is_writer else nullcontext(PipelineRun(None, None, stage))

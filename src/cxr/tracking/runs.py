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
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.core import layout
from cxr.core.config import Params
from cxr.core.errors import CxrError
from cxr.core.urls import redact, strip_userinfo
from cxr.tracking.record import record_stage

STAGES = ("download", "split", "augment", "train", "evaluate", "gradcam")

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


def _credentials_to_env(uri: str) -> str:
    """An http(s) URI without its `user:password@`, which go to the variables MLflow reads
    them from instead (unless already set): MLflow prints the URI it is given ("View run at
    ..."), so it must never hold a password."""
    if not uri.startswith(("http://", "https://")):
        return uri
    clean, user, password = strip_userinfo(uri)
    if user is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password or "")
        os.environ["MLFLOW_TRACKING_URI"] = clean
    return clean


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


class PipelineRun:
    """Logging into one MLflow run that never raises: failures are kept and reported.

    After a failed call the store is given `cooldown_s` to recover: calls in that window are
    not attempted (each would wait out the HTTP timeout and so stall training) but recorded as
    missing, like the failures, for the report at the end.
    """

    def __init__(
        self,
        client: Any | None,
        run_id: str | None,
        stage: str,
        uri: str = "",
        cooldown_s: float = 30.0,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.stage = stage
        self.uri = uri
        self.cooldown_s = cooldown_s
        self.failures: list[str] = []
        self._down_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.client is not None and self.run_id is not None

    def _guard(self, what: str, call: Callable[[], Any], force: bool = False) -> None:
        """Run one logging call; `force` tries it even in the cool-down (closing the run)."""
        if not self.enabled:
            return
        if not force and time.monotonic() < self._down_until:
            self.failures.append(f"{what}: skipped, the tracking store failed just before")
            return
        try:
            call()
        except Exception as err:  # a tracking outage must never kill a stage
            text = redact(str(err))  # a server's message may quote a URL with a password
            if not self.failures:
                print(f"warning: MLflow logging failed ({what}): {text}", file=sys.stderr)
            self.failures.append(f"{what}: {type(err).__name__}: {text}")
            self._down_until = time.monotonic() + self.cooldown_s

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        timestamp = _now_ms()
        batch = [Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()]
        for start in range(0, len(batch), 500):  # the REST API's batch limit is 1000
            chunk = batch[start : start + 500]
            self._guard(
                f"{len(chunk)} metrics (step {step})",
                lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk),
            )

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        batch = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(batch), 90):  # the REST API takes 100 params per batch
            chunk = batch[start : start + 90]
            self._guard(
                f"{len(chunk)} params",
                lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk),
            )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._guard(f"tag {key}", lambda k=key, v=value: self.client.set_tag(self.run_id, k, v))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.exists():
            self._guard(
                f"artifact {path}",
                lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
            )

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        if folder.is_dir():
            self._guard(
                f"artifacts {folder}",
                lambda: self.client.log_artifacts(self.run_id, str(folder), artifact_path),
            )

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as an image artifact; the figure is closed either way."""
        import matplotlib.pyplot as plt

        self._guard(
            f"figure {artifact_file}",
            lambda: self.client.log_figure(self.run_id, figure, artifact_file),
        )
        plt.close(figure)

    def log_table(self, table: pd.DataFrame, artifact_file: str) -> None:
        """A CSV artifact, which the UI previews as a table (counts, per-class results).
        Not `MlflowClient.log_table`: that appends to an existing file of the same name, so a
        retried stage would double its rows."""
        import tempfile

        def log() -> None:
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / Path(artifact_file).name
                table.to_csv(path, index=False)
                self.client.log_artifact(self.run_id, str(path), str(Path(artifact_file).parent))

        self._guard(f"table {artifact_file}", log)

    def log_inputs(self, datasets: list[Any]) -> None:
        """MLflow DatasetInputs (the run's Datasets column)."""
        self._guard(
            f"{len(datasets)} dataset(s)",
            lambda: self.client.log_inputs(self.run_id, datasets=datasets),
        )

    def log_model(self, model: Any, inputs: Any, registered_name: str = "") -> None:
        """The model via `mlflow.pytorch.log_model`, with a signature and an input example
        made from `inputs` (normalised images, as the model receives them), optionally
        registered."""
        self._guard(
            "model (mlflow.pytorch.log_model)",
            lambda: _log_pytorch_model(self.uri, self.run_id, model, inputs, registered_name),
        )

    def report(self) -> None:
        if self.failures:
            print(
                f"MLflow: {len(self.failures)} logging call(s) of stage {self.stage!r} failed "
                f"and are missing from run {self.run_id}:",
                file=sys.stderr,
            )
            for failure in self.failures:
                print(f"  - {failure}", file=sys.stderr)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _log_pytorch_model(uri: str, run_id: str, model: Any, inputs: Any, registered: str) -> None:
    from importlib.metadata import version

    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    example = inputs.detach().cpu().numpy()
    # Contiguous weights: torch.export's archive warns "No complete tensor found in the
    # group!" for channels_last ones (views of a permuted storage).
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            registered_model_name=registered or None,
            # Pinned here: inferring them would import the model again in a subprocess. The
            # installed distributions' versions, not torch.__version__ (`2.x+cu132` is no pip
            # version: MLflow would warn of a mismatch whenever the model is loaded).
            # timm: the EfficientNet-Lite architectures are its classes
            pip_requirements=[f"{n}=={version(n)}" for n in ("torch", "torchvision", "timm")],
        )


def lock_hashes(lock: Path = DVC_LOCK) -> dict[str, str]:
    """The md5 DVC recorded in dvc.lock for each output, by path."""
    import yaml

    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
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

    # Fail fast on an unreachable server instead of MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
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
    uri = _credentials_to_env(tracking_uri(root))
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
    finally:
        run._guard("run status", lambda: client.set_terminated(run_id, status), force=True)
        run.report()


def writer_run(stage: str, params: Params, is_writer: bool) -> AbstractContextManager[PipelineRun]:
    """The pipeline run on the process that writes (DDP rank 0); other ranks get a run that
    logs nothing and never touches MLflow."""
    return pipeline_run(stage, params) if is_writer else nullcontext(PipelineRun(None, None, stage))

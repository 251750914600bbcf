"""Logging into one MLflow run that never stops a stage: failures are kept and reported."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.core.urls import redact


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
        """A matplotlib figure as an image artifact."""
        self._guard(
            f"figure {artifact_file}",
            lambda: self.client.log_figure(self.run_id, figure, artifact_file),
        )

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

"""MLflow tracking for training and evaluation runs (main process only)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# MLflow rejects parameter values longer than this (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_LENGTH = 6000


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay whole (one parameter each)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _local_uri(uri: str) -> str:
    """Make a relative ``sqlite:///`` or plain-path URI absolute, so runs started anywhere agree."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


class MlflowTracker:
    """One MLflow run. On non-main processes every method does nothing, by design."""

    def __init__(
        self,
        uri: str,
        experiment_name: str,
        run_name: str | None = None,
        artifact_location: str | None = None,
        tags: Mapping[str, str] | None = None,
        active: bool = True,
        log_images: bool = True,
    ) -> None:
        self.active = active
        self.log_images = log_images
        self.run_id: str | None = None
        self.uri = _local_uri(uri)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.artifact_location = artifact_location
        self.tags = dict(tags or {})
        self.client: MlflowClient | None = None

    def start(self, params: Mapping[str, Any]) -> str | None:
        if not self.active:
            return None
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            location = None
            if self.artifact_location and "://" not in self.artifact_location:
                location = Path(self.artifact_location).resolve().as_uri()
            elif self.artifact_location:
                location = self.artifact_location
            experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()])
        return self.run_id

    def attach(self, run_id: str) -> bool:
        """Continue logging to an existing run (e.g. evaluation of a trained model); False if absent."""
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        self.run_id = run_id
        return True

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or self.run_id is None:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.active and self.run_id is not None:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        if self.active and self.log_images and self.run_id is not None:
            self.client.log_image(self.run_id, image, key=key, step=step)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.active and self.run_id is not None:
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.active and self.run_id is not None:
            self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self.active and self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

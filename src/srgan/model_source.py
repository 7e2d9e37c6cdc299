"""Where a trained model comes from: a folder on disk, or an MLflow artifact URI fetched to one.

Shared by every entry point that takes ``model=`` (``srgan-eval``, ``srgan-infer``) and by the
``uncertainty=ensemble`` members; :func:`srgan.engine.checkpoint.load_model` then reads the folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def resolve_model(model: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """A model folder, a run folder, or an MLflow artifact URI (``runs:/<id>/model``, ``models:/<name>/<v>``,
    ``mlflow-artifacts:/...``) downloaded to a temporary folder."""
    text = str(model)
    if not Path(text).exists() and re.match(r"^[a-zA-Z][\w+.-]+:/", text):
        import mlflow

        target = tempfile.mkdtemp(prefix="srgan-model-")
        # models:/ URIs are looked up in the model registry, which MLflow takes from its registry URI,
        # not from download_artifacts' tracking_uri: the registry is the tracking store's unless
        # MLFLOW_REGISTRY_URI says otherwise.
        registry = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=text, dst_path=target, tracking_uri=tracking_uri, registry_uri=registry
        )
        return Path(path)
    return Path(text)

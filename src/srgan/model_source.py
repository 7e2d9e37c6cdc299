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
        # models:/ URIs are looked up in the model registry through clients MLflow makes with its
        # default URIs, not with download_artifacts' tracking_uri (which would open, and create,
        # ./mlflow.db): MLflow's environment variables name the store for the call, then are restored.
        # A registry of its own (MLFLOW_REGISTRY_URI) is kept; otherwise it is the tracking store.
        saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        if tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
            os.environ.setdefault("MLFLOW_REGISTRY_URI", tracking_uri)
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=target, tracking_uri=tracking_uri)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return Path(path)
    return Path(text)

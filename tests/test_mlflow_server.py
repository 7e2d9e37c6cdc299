"""Integration: a training run logged to a real MLflow tracking server on 127.0.0.1."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from srgan.train import train
from tests.conftest import TINY, compose_config
from tests.mlflow_server import MlflowServer

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


def test_training_logs_to_a_tracking_server(mlflow_server, tmp_path):
    cfg = compose_config(
        "train",
        TINY
        + [
            f"tracking.uri={mlflow_server}",
            "tracking.experiment_name=server-test",
            "tracking.artifact_location=null",
            "trainer.max_steps=3",
        ],
    )
    result = train(cfg, tmp_path / "run")
    client = MlflowClient(mlflow_server)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert "val/psnr" in run.data.metrics and "train/l1" in run.data.metrics
    assert {f.path for f in client.list_artifacts(result["run_id"], "model")} == {
        "model/generator.safetensors",
        "model/config.yaml",
        "model/MLmodel",  # the MLflow pyfunc flavour (docs/deploy.md)
    }

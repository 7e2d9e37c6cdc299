"""Models others can use: the exported folder as an MLflow pyfunc model (predict, `mlflow models
predict`, the model registry and `srgan-infer model=models:/...`) and as ONNX checked against torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from srgan.engine.checkpoint import ModelError, load_model, resolve_model_dir
from tests.conftest import compose_config, tracked_tiny

NAME = "s2-demo-tiny"


def _cli(module: str, *args: str, ok: bool = True, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    if ok:
        assert out.returncode == 0, f"{module} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The demo's model (experiment=demo, shrunk as in every test), trained and registered."""
    from srgan.train import train

    tmp = tmp_path_factory.mktemp("deploy")
    overrides = tracked_tiny(tmp) + ["trainer.max_steps=4", f"tracking.register_as={NAME}"]
    result = train(compose_config("train", overrides), tmp / "run")
    return tmp, f"sqlite:///{tmp}/mlruns.db", Path(result["run_dir"]), result["run_id"]


def _lr(bands: int = 4, h: int = 20, w: int = 23, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 3000, (n, bands, h, w)).astype(np.float32)


def _torch_reference(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """The generator between the card's normalisations, without srgan.deploy."""
    model = load_model(model_dir)
    with torch.no_grad():
        y = model.generator(model.lr_normalization.normalize(torch.from_numpy(x)))
        return model.normalization.denormalize(y).numpy()


@pytest.mark.slow
def test_exported_model_is_an_mlflow_pyfunc_model_in_the_rasters_units(registered):
    import mlflow.pyfunc
    import yaml

    _, _, run_dir, _ = registered
    spec = yaml.safe_load((run_dir / "model" / "MLmodel").read_text())
    assert spec["flavors"]["python_function"]["loader_module"] == "srgan.deploy"
    inputs = json.loads(spec["signature"]["inputs"])
    assert inputs[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, 4, -1, -1]}
    assert not list((run_dir / "model").glob("*.pkl"))  # nothing pickled
    x = _lr()
    y = mlflow.pyfunc.load_model(str(run_dir / "model")).predict(x)
    assert y.shape == (2, 4, 80, 92) and y.dtype == np.float32
    # One tile covers the image: the tiled pass equals the plain forward pass.
    np.testing.assert_allclose(y, _torch_reference(run_dir / "model", x), rtol=0, atol=1e-2)
    assert 100 < float(y.mean()) < 3000  # digital numbers in, digital numbers out


@pytest.mark.slow
def test_registered_model_serves_mlflow_models_predict_and_srgan_infer(registered, tmp_path):
    import rasterio

    tmp, uri, run_dir, run_id = registered
    client = MlflowClient(uri)
    (version,) = client.search_model_versions(f"name = '{NAME}'")
    assert version.run_id == run_id and str(version.version) == "1"
    assert client.get_run(run_id).data.tags["registered_model"] == f"models:/{NAME}/1"

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    x = _lr(n=1, seed=3)
    (tmp_path / "in.json").write_text(json.dumps({"inputs": x.tolist()}))
    cmd = ["predict", "-m", f"models:/{NAME}/1", "-i", str(tmp_path / "in.json"), "-t", "json"]
    cmd += ["-o", str(tmp_path / "out.json"), "--env-manager", "local"]
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    out = subprocess.run([mlflow_cli, "models", *cmd], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    predicted = np.asarray(json.loads((tmp_path / "out.json").read_text())["predictions"], dtype=np.float32)
    np.testing.assert_allclose(predicted, _torch_reference(run_dir / "model", x), rtol=0, atol=1e-2)

    _cli("srgan.degrade", "split=test", f"output={tmp_path}/lr.tif")
    by_uri, by_folder = tmp_path / "uri.tif", tmp_path / "folder.tif"
    _cli(
        "srgan.infer",
        f"model=models:/{NAME}/1",
        f"input={tmp_path}/lr.tif",
        f"output={by_uri}",
        f"tracking_uri={uri}",
        cwd=tmp_path,
    )
    assert not (tmp_path / "mlflow.db").exists()  # the registry lookup used tracking_uri, not MLflow's default
    _cli("srgan.infer", f"model={run_dir}", f"input={tmp_path}/lr.tif", f"output={by_folder}")
    with rasterio.open(by_uri) as a, rasterio.open(by_folder) as b:
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform


@pytest.mark.slow
def test_register_again_adds_a_version(registered, tmp_path):
    from srgan.train import train

    tmp, uri, _, _ = registered
    overrides = tracked_tiny(tmp) + ["trainer.max_steps=2", f"tracking.register_as={NAME}"]
    second = train(compose_config("train", overrides), tmp_path / "run")
    versions = MlflowClient(uri).search_model_versions(f"name = '{NAME}'")
    assert {str(v.version): v.run_id for v in versions}["2"] == second["run_id"]


@pytest.mark.slow
def test_onnx_export_equals_torch_within_1e_4_on_three_tile_sizes(registered, tmp_path):
    import onnxruntime as ort

    _, uri, run_dir, _ = registered
    target = tmp_path / "g.onnx"
    out = _cli("srgan.export", f"model={run_dir}", f"output={target}", "check_sizes=[16,40,64]")
    assert "max relative error" in out.stdout
    report = json.loads((tmp_path / "g.onnx.json").read_text())
    assert [c["lr_size"][0] for c in report["checks"]] == [16, 40, 64]
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    model = load_model(run_dir)
    # The graph is the architecture as written: its last conv is the tail itself, not the CPU
    # inference fold through the pixel shuffle (srgan.models.generators.SRGenerator._folded_tail).
    import onnx

    graph = onnx.load(str(target)).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    last_conv = [node for node in graph.node if node.op_type == "Conv"][-1]
    assert shapes.get(last_conv.input[1]) == tuple(model.generator.tail.weight.shape)
    scale = model.normalization.scale  # DN per reflectance unit: compare in the model's units
    for size, (h, w) in enumerate([(16, 16), (40, 33), (64, 71)]):
        x = _lr(h=h, w=w, n=1 + size, seed=10 + size)
        got = session.run(None, {"lr": x})[0]
        expected = _torch_reference(run_dir, x)
        assert got.shape == expected.shape == (1 + size, 4, 4 * h, 4 * w)
        assert float(np.abs(got - expected).max()) / scale < 1e-4

    again = _cli("srgan.export", f"model={run_dir}", f"output={target}", ok=False)
    assert again.returncode == 2 and "exists" in again.stderr
    uri_only = _cli("srgan.export", f"model=models:/{NAME}/1", f"tracking_uri={uri}", ok=False)
    assert uri_only.returncode == 2 and "output=" in uri_only.stderr
    bad = _cli("srgan.export", f"model={run_dir}", "format=tflite", f"output={tmp_path}/x", ok=False)
    assert bad.returncode == 2 and "format must be onnx" in bad.stderr


def test_mlmodel_data_path_outside_the_folder_is_refused(model_dir, tmp_path):
    pyfunc = tmp_path / "pyfunc"
    (pyfunc / "data").mkdir(parents=True)
    for f in model_dir.iterdir():
        shutil.copy(f, pyfunc / "data" / f.name)
    mlmodel = "flavors:\n  python_function:\n    loader_module: os\n    data: {}\n"
    (pyfunc / "MLmodel").write_text(mlmodel.format("data"))
    assert resolve_model_dir(pyfunc) == (pyfunc / "data").resolve()  # followed inside the folder only
    (pyfunc / "MLmodel").write_text(mlmodel.format(str(model_dir)))
    with pytest.raises(ModelError, match="MLmodel.*outside the model folder"):
        resolve_model_dir(pyfunc)
    (pyfunc / "MLmodel").write_text(mlmodel.format("../../" + model_dir.name))
    with pytest.raises(ModelError, match="outside the model folder"):
        resolve_model_dir(pyfunc)
    (pyfunc / "MLmodel").write_text("flavors: [unclosed")
    with pytest.raises(ModelError, match="MLmodel: not a readable MLmodel"):
        resolve_model_dir(pyfunc)


def test_pyfunc_predict_names_a_wrong_input(model_dir):
    from srgan.deploy import DeployError, SRPyfunc, write_mlmodel

    write_mlmodel(model_dir, 4, 4)
    model = SRPyfunc(model_dir)
    with pytest.raises(DeployError, match=r"expected an array \(N, 4, H, W\).*B04.*got shape \(2, 3, 8, 8\)"):
        model.predict(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(DeployError, match="numeric"):
        model.predict(np.array([["a"]]))
    single = model.predict({"lr": np.full((4, 8, 8), 500, np.float32)})
    assert single.shape == (4, 32, 32)


def test_register_as_must_be_a_plain_model_name(composed):
    from srgan.config import ConfigError, validate_training_config

    cfg = composed("train", ["tracking.register_as=\"x' or name like '%\""])
    with pytest.raises(ConfigError, match="tracking.register_as"):
        validate_training_config(cfg)

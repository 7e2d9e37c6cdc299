"""Tiny runs through the real loop, logging to a real MLflow store."""

from __future__ import annotations

import re

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from srgan.engine.checkpoint import load_model
from srgan.engine.ema import EMA
from srgan.engine.schedules import AdversarialRamp
from srgan.engine.state_io import load_tree
from srgan.train import train
from tests.conftest import compose_config

pytestmark = pytest.mark.slow


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_tiny_run_logs_everything_and_exports_the_ema_generator(tmp_path, tiny_overrides):
    cfg = compose_config("train", tiny_overrides + ["loss.weights.adversarial=0.01"])
    result = train(cfg, tmp_path / "run")
    run_dir = result["run_dir"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["generator.n_channels"] == "8"
    assert run.data.params["loss.weights.adversarial"] == "0.01"

    # Pretraining for 2 steps, then a 2-step linear ramp to the target weight.
    weights = [round(v, 6) for _, v in history(client, run.info.run_id, "train/adversarial_weight")]
    assert weights == [0.0, 0.0, 0.005, 0.01, 0.01, 0.01]
    assert [s for s, _ in history(client, run.info.run_id, "train/l1")] == [1, 2, 3, 4, 5, 6]
    d_real = history(client, run.info.run_id, "train/d_real_prob")
    assert [s for s, _ in d_real] == [3, 4, 5, 6] and all(0 < v < 1 for _, v in d_real)
    assert history(client, run.info.run_id, "train/d_fake_prob")
    assert history(client, run.info.run_id, "train/lr_g")[0][1] == pytest.approx(1e-3)
    val = history(client, run.info.run_id, "val/psnr")
    assert [s for s, _ in val] == [3, 6]
    assert history(client, run.info.run_id, "val/bicubic_psnr")

    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"resolved_config.yaml", "model"} <= artifacts
    assert {f.path for f in client.list_artifacts(run.info.run_id, "model")} == {
        "model/generator.safetensors",
        "model/config.yaml",
        "model/MLmodel",  # the MLflow pyfunc flavour (docs/deploy.md)
    }
    grids = [f.path for f in client.list_artifacts(run.info.run_id, "val_grids")]
    assert grids and all(re.fullmatch(r"val_grids/val_grid_step\d{6}\.png", g) for g in grids), grids

    # The released weights are the EMA generator's, bit for bit, and rebuild without the training config.
    exported = load_file(str(run_dir / "model" / "generator.safetensors"))
    ema_state = load_tree(run_dir / "checkpoints" / "step-00000006" / "ema")
    for key, value in exported.items():
        torch.testing.assert_close(value, ema_state["module"][key])
    model = load_model(run_dir)
    assert model.band_names == ["B04", "B03", "B02", "B08"] and model.scale == 4
    assert model.generator(torch.rand(1, 4, 8, 8)).shape == (1, 4, 32, 32)


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_overrides):
    straight = train(compose_config("train", tiny_overrides), tmp_path / "straight")
    first = train(compose_config("train", tiny_overrides + ["trainer.max_steps=3"]), tmp_path / "first")
    assert first["step"] == 3
    resumed = train(
        compose_config("train", tiny_overrides + [f"resume={tmp_path}/first/checkpoints/step-00000003"]),
        tmp_path / "unused",
    )
    assert resumed["run_dir"] == first["run_dir"] and resumed["run_id"] == first["run_id"]
    assert resumed["step"] == 6
    a = load_file(str(straight["run_dir"] / "model" / "generator.safetensors"))
    b = load_file(str(resumed["run_dir"] / "model" / "generator.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bf16_run_trains_with_finite_losses(tmp_path, tiny_overrides):
    result = train(
        compose_config("train", tiny_overrides + ["trainer.precision=bf16", "trainer.max_steps=4"]), tmp_path / "run"
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    assert client.get_run(result["run_id"]).data.params["trainer.precision"] == "bf16"
    losses = history(client, result["run_id"], "train/g_total")
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(v)) for _, v in losses)


def test_ramp_shapes_and_ema_semantics():
    for shape in ("linear", "cosine", "sigmoid"):
        ramp = AdversarialRamp(10, 4, shape)
        values = [ramp(s) for s in range(20)]
        assert values[:10] == [0.0] * 10 and values[13:] == [1.0] * 7
        assert all(a <= b for a, b in zip(values, values[1:]))
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.5, start_step=1)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(7.0)
    ema.update(model, step=0)  # before start_step: a plain copy
    assert ema.module.weight.tolist() == [3.0, 3.0]
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update(model, step=1)
    assert ema.module.weight.tolist() == [4.0, 4.0]  # 0.5 * 3 + 0.5 * 5
    assert ema.module.running_mean.tolist() == [7.0, 7.0]  # buffers copied, not averaged


@pytest.mark.parametrize(
    "adversarial",
    [
        ["loss.adversarial.gan_type=wgan_gp", "loss.adversarial.r1_weight=1.0"],
        ["loss.adversarial.gan_type=ragan"],
    ],
)
def test_every_loss_term_and_penalty_is_logged(tmp_path, tiny_overrides, adversarial):
    terms = ["sam", "ssim", "tv", "band_mean", "lpips"]
    overrides = ["loss=full", "trainer.max_steps=4"] + [f"loss.weights.{t}=0.1" for t in terms] + adversarial
    result = train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    metrics = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db").get_run(result["run_id"]).data.metrics
    expected = {f"train/{t}" for t in ["l1", *terms]} | {"train/g_adversarial", "train/d_loss"}
    if "wgan_gp" in adversarial[0]:
        expected |= {"train/d_gp", "train/d_r1"}
    assert expected <= set(metrics), expected - set(metrics)
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in expected)

"""The training engine's schedules, guards and bookkeeping, on tiny real runs and in isolation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from srgan.config import ConfigError, validate_training_config
from srgan.engine.checkpoint import find_checkpoint
from srgan.engine.ema import EMA
from srgan.engine.health import GANHealth
from srgan.engine.loop import NonFiniteError
from srgan.engine.schedules import LRSchedule
from srgan.engine.state_io import load_tree
from srgan.models.generators import RCABGenerator
from srgan.train import train
from tests.conftest import compose_config


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def adam_steps(stem) -> list[int]:
    """Optimizer steps taken, read from a checkpoint's optimizer state (``optimizer_g`` / ``optimizer_d``)."""
    state = load_tree(stem)["state"]
    return sorted({int(s["step"]) for s in state.values()})


# -- learning-rate schedules ---------------------------------------------------------------------


def _lrs(schedule: LRSchedule, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return values


def test_lr_warmup_cosine_and_multistep_follow_their_formulas():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    lrs = _lrs(LRSchedule(opt, 10, "cosine", warmup_steps=2, min_lr_ratio=0.1), opt, 10)
    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)]
    assert lrs == pytest.approx(expected)
    opt = torch.optim.SGD([p], lr=1.0)
    lrs = _lrs(LRSchedule(opt, 10, "multistep", milestones=[3, 6], gamma=0.1), opt, 8)
    assert lrs == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_plateau_lowers_the_rate_only_after_patience_and_warmup():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    schedule = LRSchedule(opt, 100, "plateau", warmup_steps=2, gamma=0.5, patience=1, monitor="val/psnr")
    schedule.observe({"val/psnr": 30.0})  # during warm-up: ignored
    assert _lrs(schedule, opt, 2) == pytest.approx([0.5, 1.0])
    for value, lr in [(30.0, 1.0), (30.0, 1.0), (30.0, 0.5), (31.0, 0.5), (31.0, 0.5), (31.0, 0.25)]:
        schedule.observe({"val/psnr": value})
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    with pytest.raises(KeyError, match="lr.monitor='val/psnr' is not a validation metric"):
        schedule.observe({"val/ssim": 0.9})


@pytest.mark.slow
def test_logged_learning_rates_follow_the_configured_schedules(tmp_path, tiny_overrides):
    overrides = [
        "trainer.max_steps=8",
        "schedule.lr_g.policy=cosine",
        "schedule.lr_g.warmup_steps=2",
        "schedule.lr_d.policy=multistep",
        "schedule.lr_d.milestones=[4]",
        "schedule.lr_d.gamma=0.1",
    ]
    result = train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    lr_g = history(client, result["run_id"], "train/lr_g")
    lr_d = history(client, result["run_id"], "train/lr_d")
    # Logged after step s (1-based): the rate the next step will use.
    base_g, base_d = 1e-3, 1e-4
    assert [s for s, _ in lr_g] == list(range(1, 9))
    for s, value in lr_g:
        factor = (s + 1) / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 6))
        assert value == pytest.approx(base_g * factor), s
    assert [v for _, v in lr_d] == pytest.approx([base_d] * 3 + [base_d * 0.1] * 5)


# -- EMA -----------------------------------------------------------------------------------------


def test_ema_warmup_decay_and_disabled_ema_follows_the_model():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.999, start_step=3, warmup=True)
    assert [ema.decay_at(s) for s in range(3)] == [0.0, 0.0, 0.0]
    assert ema.decay_at(3) == pytest.approx(1 / 10) and ema.decay_at(13) == pytest.approx(11 / 20)
    assert ema.decay_at(100_000) == 0.999
    off = EMA(model, decay=0.999, enabled=False)
    with torch.no_grad():
        model.weight.add_(1.0)
    off.update(model, step=50)
    assert torch.equal(off.module.weight, model.weight)


# -- the discriminator's schedule ------------------------------------------------------------------


@pytest.mark.slow
def test_discriminator_warmup_interval_and_steps_per_g(tmp_path, tiny_overrides):
    overrides = [
        "schedule.discriminator.warmup_steps=3",
        "schedule.discriminator.every=2",
        "schedule.discriminator.steps_per_g=2",
        "trainer.checkpoint.best_metric=null",
    ]
    result = train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    last = result["run_dir"] / "checkpoints" / "step-00000006"
    # G: 6 steps. D: 3 warm-up steps, then at generator steps 2 and 4 (every 2nd from step 2), 2 each.
    assert adam_steps(last / "optimizer_g") == [6]
    assert adam_steps(last / "optimizer_d") == [3 + 2 * 2]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    assert history(client, result["run_id"], "train/d_warmup_steps_done")[-1] == (6, 3.0)
    # Data position: 6 G batches + 3 warm-up + 2 extra D batches.
    state = load_tree(last / "train_state")
    assert state["batches"] == 11 and state["step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
def test_holdback_skips_discriminator_updates_while_it_is_confident(tmp_path, tiny_overrides, monkeypatch, fused):
    import srgan.engine.steps as steps

    gaps = iter([0.9, 0.1, 0.95, 0.2])
    if fused:  # the gap comes from the logits of the shared D pass
        monkeypatch.setattr(steps, "probability_gap", lambda *a: next(gaps))
    else:
        monkeypatch.setattr(steps, "discriminator_confidence", lambda *a: next(gaps))
    overrides = [
        "schedule.discriminator.holdback=0.8",
        "trainer.checkpoint.best_metric=null",
        f"trainer.fused_gan_step={str(fused).lower()}",
    ]
    result = train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    last = result["run_dir"] / "checkpoints" / "step-00000006"
    assert adam_steps(last / "optimizer_d") == [2]  # 4 adversarial steps, 2 held back
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    held = [v for _, v in history(client, result["run_id"], "train/d_held_back")]
    assert sum(held) == 2


def test_discriminator_confidence_is_the_probability_gap():
    from accelerate import Accelerator

    from srgan.engine.steps import discriminator_confidence

    class Brightness(torch.nn.Module):
        def forward(self, x):
            return 20 * (x.mean(dim=(1, 2, 3)) - 0.5)

    hr, sr = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    gap = discriminator_confidence(Accelerator(cpu=True), Brightness(), hr, sr)
    assert gap == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item() - torch.sigmoid(torch.tensor(-10.0)).item())


# -- fused GAN step ------------------------------------------------------------------------------


def _tiny_gan(seed: int = 0):
    from srgan.models.discriminators import SRGANDiscriminator

    torch.manual_seed(seed)
    g = RCABGenerator(3, 3, 2, n_channels=8, n_blocks=2, reduction=4)
    d = SRGANDiscriminator(3, base_channels=8, n_stages=2, head_features=16)
    return g, d


def _compare_fused_with_separate_steps(adversarial, g1, d1, batch, steps=3):
    """Run ``steps`` fused and separate GAN steps from the same weights; assert they agree.

    Returns, per fused step, whether G's adversarial gradient came from D's backward pass.
    """
    import copy

    from accelerate import Accelerator

    from srgan.engine.steps import discriminator_step, gan_step, generator_step
    from srgan.losses import CompositeLoss, GANLoss, L1Loss

    accelerator = Accelerator(cpu=True)
    loss = CompositeLoss({"l1": 1.0, "adversarial": 0.1}, {"l1": L1Loss()}, GANLoss(**adversarial))
    g2, d2 = copy.deepcopy(g1), copy.deepcopy(d1)
    g0 = next(g1.parameters()).detach().clone()
    d0 = next(d1.parameters()).detach().clone()

    def sgd(m):
        # Not Adam: its first steps are sign(grad) x lr, so a parameter whose gradient is pure float
        # noise (RaGAN's loss is blind to D's last bias) would move by a full step either way.
        return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

    og1, od1, og2, od2 = sgd(g1), sgd(d1), sgd(g2), sgd(d2)
    from_d_pass = []
    close = {"rtol": 1e-4, "atol": 1e-6}
    for _ in range(steps):  # later steps start from moved weights and filled momentum
        torch.manual_seed(2)  # the WGAN-GP interpolation draw
        sr, g_stats, g_ok = generator_step(accelerator, g1, d1, loss, og1, batch, 0.1)
        d_stats, d_ok = discriminator_step(accelerator, d1, loss, od1, batch["hr"], sr)
        torch.manual_seed(2)
        fused = gan_step(accelerator, g2, d2, loss, og2, od2, batch, 0.1)
        assert g_ok and d_ok and fused.g_stepped and fused.d_trained and fused.d_stepped
        from_d_pass.append(fused.g_adversarial_from_d_pass)
        # D sees real and SR in one batch of 4 in discriminator_step and in two of 2 here: float rounding.
        torch.testing.assert_close(fused.sr, sr, **close)
        for key in ("g_total", "g_adversarial", "g_grad_norm"):
            torch.testing.assert_close(fused.stats[key], g_stats[key], **close)
        for key, value in d_stats.items():
            torch.testing.assert_close(fused.stats[key], value, **close)
    for a, b in zip([*g1.parameters(), *d1.parameters()], [*g2.parameters(), *d2.parameters()]):
        torch.testing.assert_close(a, b, **close)
    # Both networks moved (the comparison is not between two untouched copies).
    assert not torch.equal(g0, next(g2.parameters()))
    assert not torch.equal(d0, next(d2.parameters()))
    return from_d_pass


@pytest.mark.parametrize(
    "adversarial",
    [
        {"gan_type": "vanilla"},
        {"gan_type": "ragan"},
        {"gan_type": "lsgan"},
        {"gan_type": "wgan_gp"},
        {"gan_type": "hinge", "r1_weight": 2.0},
    ],
    ids=["vanilla", "ragan", "lsgan", "wgan_gp", "hinge_r1"],
)
def test_fused_gan_step_updates_both_networks_as_the_separate_steps(adversarial):
    torch.manual_seed(1)
    batch = {"lr": torch.rand(2, 3, 8, 8), "hr": torch.rand(2, 3, 16, 16)}
    g, d = _tiny_gan()
    from_d_pass = _compare_fused_with_separate_steps(adversarial, g, d, batch)
    if adversarial["gan_type"] != "hinge":  # hinge's D gradient is 0 for logits below -1
        assert all(from_d_pass)  # G's adversarial gradient came from D's own backward pass


def test_fused_gan_step_backpropagates_through_d_again_where_the_ratio_cannot_be_used():
    from srgan.models.discriminators import PatchGANDiscriminator

    torch.manual_seed(1)
    batch = {"lr": torch.rand(2, 3, 8, 8), "hr": torch.rand(2, 3, 16, 16)}
    # Hinge with every logit far below -1: D's loss has no gradient at SR's logits.
    g, d = _tiny_gan()
    with torch.no_grad():
        d.head[-1].bias.fill_(-20.0)
    assert _compare_fused_with_separate_steps({"gan_type": "hinge"}, g, d, batch, steps=2) == [False] * 2
    # Patch logits: several per sample, so no per-sample ratio.
    g, _ = _tiny_gan()
    torch.manual_seed(3)
    patch = PatchGANDiscriminator(3, base_channels=8, n_layers=2, norm="none")
    assert _compare_fused_with_separate_steps({"gan_type": "vanilla"}, g, patch, batch) == [False] * 3


def _rescaled_and_second_pass(monkeypatch, accelerator):
    """One fused step from the same weights, with the rescaling and without it (a second pass through D).

    Returns both step results and each run's gradients (G's parameters, then D's), kept after the step.
    """
    import copy

    import srgan.engine.steps as steps
    from srgan.losses import CompositeLoss, GANLoss, L1Loss

    loss = CompositeLoss({"l1": 1.0, "adversarial": 0.5}, {"l1": L1Loss()}, GANLoss("vanilla"))
    torch.manual_seed(1)
    batch = {"lr": torch.rand(3, 3, 8, 8), "hr": torch.rand(3, 3, 16, 16)}
    g1, d1 = _tiny_gan()
    g2, d2 = copy.deepcopy(g1), copy.deepcopy(d1)
    results, grads = [], []
    for g, d, limit in ((g1, d1, steps.MAX_LOGIT_GRAD_RATIO), (g2, d2, 0.0)):  # 0: never rescale
        monkeypatch.setattr(steps, "MAX_LOGIT_GRAD_RATIO", limit)
        og, od = accelerator.prepare(torch.optim.SGD(g.parameters(), lr=0.0), torch.optim.SGD(d.parameters(), lr=0.0))
        og.optimizer.zero_grad = od.optimizer.zero_grad = lambda set_to_none=True: None  # keep the gradients
        results.append(steps.gan_step(accelerator, g, d, loss, og, od, batch, 0.5))
        grads.append([p.grad.clone() for p in [*g.parameters(), *d.parameters()]])
    return results, grads, len(list(g1.parameters()))


def test_fused_gan_step_rescaled_gradient_equals_a_second_pass_through_d(monkeypatch):
    from accelerate import Accelerator

    results, grads, _ = _rescaled_and_second_pass(monkeypatch, Accelerator(cpu=True))
    for result, rescaled in zip(results, (True, False)):
        assert result.g_adversarial_from_d_pass == rescaled
        assert float(result.stats["g_adv_second_pass"]) == (0.0 if rescaled else 1.0)
    assert any(x.abs().sum() > 0 for x in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fused_gan_step_under_mixed_precision(monkeypatch, precision):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # the process-wide state holds one precision at a time
    try:
        results, grads, n_g = _rescaled_and_second_pass(monkeypatch, Accelerator(cpu=True, mixed_precision=precision))
    finally:
        AcceleratorState._reset_state(True)
    assert all(result.g_stepped for result in results)
    paths = [result.g_adversarial_from_d_pass for result in results]
    g_grads = [run[:n_g] for run in grads]
    if precision == "bf16":  # rescaled: the same gradient up to bf16 rounding inside D
        assert paths == [True, False]
        for a, b in zip(*g_grads):
            torch.testing.assert_close(a, b, rtol=0.02, atol=0.02 * b.abs().max().item())
    else:  # fp16: loss scaling must reach G's pass through D, so G's loss goes through D itself
        assert paths == [False, False]
        for a, b in zip(*g_grads):
            torch.testing.assert_close(a, b)


def test_fused_gan_step_holdback_and_train_d_leave_the_discriminator_alone():
    from accelerate import Accelerator

    from srgan.engine.steps import gan_step
    from srgan.losses import CompositeLoss, GANLoss, L1Loss

    accelerator = Accelerator(cpu=True)
    loss = CompositeLoss({"l1": 1.0, "adversarial": 0.1}, {"l1": L1Loss()}, GANLoss())
    batch = {"lr": torch.rand(2, 3, 8, 8), "hr": torch.rand(2, 3, 16, 16)}
    g, d = _tiny_gan()
    before = [p.detach().clone() for p in d.parameters()]
    og, od = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    held = gan_step(accelerator, g, d, loss, og, od, batch, 0.1, holdback=-2.0)  # every gap exceeds -2
    skipped = gan_step(accelerator, g, d, loss, og, od, batch, 0.1, train_d=False)
    for result in (held, skipped):
        assert result.g_stepped and not result.d_trained and not result.d_stepped
        assert "d_loss" not in result.stats and "d_real_prob" in result.stats
    assert all(torch.equal(a, b) for a, b in zip(before, d.parameters()))
    assert all(p.grad is None for p in d.parameters())
    kept = gan_step(accelerator, g, d, loss, og, od, batch, 0.1, holdback=2.0)
    assert kept.d_trained and kept.d_stepped
    assert not torch.equal(before[0], next(d.parameters()))


def test_fused_gan_step_setting_follows_the_discriminator():
    from srgan.engine.build import fused_gan_step
    from srgan.models.discriminators import ESRGANDiscriminator, SRGANDiscriminator

    assert fused_gan_step("auto", SRGANDiscriminator(3, base_channels=8, n_stages=2))
    assert not fused_gan_step("auto", ESRGANDiscriminator(3, base_channels=8, n_stages=2, norm="batch"))
    assert fused_gan_step(True, ESRGANDiscriminator(3, base_channels=8, n_stages=2, norm="batch"))
    assert not fused_gan_step(False, SRGANDiscriminator(3, base_channels=8, n_stages=2))
    with pytest.raises(ConfigError, match="trainer.fused_gan_step"):
        validate_training_config(compose_config("train", ["trainer.fused_gan_step=sometimes"]))


# -- gradient accumulation -----------------------------------------------------------------------


@pytest.mark.slow
def test_gradient_accumulation_equals_the_larger_batch(tmp_path, tiny_overrides):
    # Pretraining only (content loss, a mean over the batch): 2 micro-batches of 2 == one batch of 4.
    common = ["schedule.pretrain_steps=10", "trainer.max_steps=3", "trainer.checkpoint.best_metric=null"]
    big = train(compose_config("train", tiny_overrides + common + ["trainer.batch_size=4"]), tmp_path / "big")
    acc = train(
        compose_config("train", tiny_overrides + common + ["trainer.batch_size=2", "trainer.grad_accumulation=2"]),
        tmp_path / "acc",
    )
    a = load_tree(big["run_dir"] / "checkpoints" / "step-00000003" / "ema")
    b = load_tree(acc["run_dir"] / "checkpoints" / "step-00000003" / "ema")
    for key, value in a["module"].items():
        torch.testing.assert_close(value, b["module"][key], rtol=1e-4, atol=1e-6)
    assert adam_steps(acc["run_dir"] / "checkpoints" / "step-00000003" / "optimizer_g") == [3]


# -- non-finite steps ----------------------------------------------------------------------------


@pytest.mark.slow
def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path, tiny_overrides, monkeypatch):
    forward = RCABGenerator.forward
    calls = {"n": 0}

    def poisoned(self, x):
        out = forward(self, x)
        if self.training:
            calls["n"] += 1
            # Generator forwards 3 and from 7 on produce NaN (training mode only).
            if calls["n"] == 3 or calls["n"] >= 7:
                return out * float("nan")
        return out

    monkeypatch.setattr(RCABGenerator, "forward", poisoned)
    overrides = ["trainer.max_nonfinite=3", "trainer.ckpt_every=1", "schedule.pretrain_steps=20"]
    with pytest.raises(NonFiniteError, match="3 optimizer steps in a row had a non-finite loss") as err:
        train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    # Forward 3 was skipped, so forwards 1, 2, 4, 5, 6 made steps 1..5; forwards 7, 8, 9 failed.
    assert "step-00000005" in str(err.value)
    run_dir = tmp_path / "run"
    assert find_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000005"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.search_runs([client.get_experiment_by_name("test").experiment_id])[0]
    assert run.info.status == "FAILED"
    skipped = history(client, run.info.run_id, "train/nonfinite_skipped_total")
    assert skipped == [(1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0), (5, 1.0)]
    # A skipped step's losses are not mixed into the logged means.
    assert all(math.isfinite(v) for _, v in history(client, run.info.run_id, "train/l1"))


# -- GAN health ----------------------------------------------------------------------------------


def test_health_warns_once_per_persistent_signature():
    health = GANHealth(patience=3)
    fine = {"train/d_real_prob": 0.6, "train/d_fake_prob": 0.4, "train/g_adversarial": 1.0}
    collapsed = {"train/d_real_prob": 0.99, "train/d_fake_prob": 0.01, "train/g_adversarial": 1.0}
    assert all(health.update(s, fine) == {} for s in range(3))
    raised = [health.update(s, collapsed) for s in range(3, 10)]
    assert [sorted(r) for r in raised] == [[], [], ["fake_prob_collapsed"], [], [], ["discriminator_overpowering"], []]
    assert health.update(10, {**fine, "train/g_adversarial": 50.0}) == {}
    assert health.update(11, {**fine, "train/g_adversarial": 50.0}) == {}
    assert list(health.update(12, {**fine, "train/g_adversarial": 50.0})) == ["adversarial_loss_exploding"]
    # WGAN critics give unbounded scores: no probability signatures there.
    wgan = GANHealth(patience=1, probabilistic=False)
    assert wgan.update(0, collapsed) == {}


@pytest.mark.slow
def test_health_warnings_reach_mlflow_tags(tmp_path, tiny_overrides):
    overrides = ["trainer.health.patience=1", "trainer.health.fake_prob_floor=0.99"]
    result = train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    assert "fake_prob_collapsed" in result["health_warnings"]
    tags = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db").get_run(result["run_id"]).data.tags
    assert tags["health.fake_prob_collapsed"].startswith("step 3: D(G(x)) =")


# -- checkpoints -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_retention_keeps_last_k_and_the_best(tmp_path, tiny_overrides):
    overrides = ["trainer.ckpt_every=1", "trainer.checkpoint.keep_last=2", "trainer.val_every=2"]
    overrides += ["trainer.checkpoint.best_metric=val/psnr", "trainer.checkpoint.best_mode=min"]
    result = train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    root = result["run_dir"] / "checkpoints"
    best = json.loads((root / "best.json").read_text())
    assert best["metric"] == "val/psnr"
    kept = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert kept == sorted({f"step-{s:08d}" for s in (5, 6, best["step"])})
    marker = json.loads((root / "step-00000006" / "checkpoint.json").read_text())
    assert marker["step"] == 6 and marker["run_id"] == result["run_id"] and "val/psnr" in marker["metrics"]


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    good = root / "step-00000004"
    good.mkdir(parents=True)
    (good / "checkpoint.json").write_text("{}")
    (root / "step-00000008.tmp").mkdir()  # killed mid-write
    unmarked = root / "step-00000006"  # written by hand, or marker lost
    unmarked.mkdir()
    (unmarked / "generator.safetensors").write_bytes(b"x")
    assert find_checkpoint(tmp_path / "run") == good
    assert find_checkpoint(good) == good
    assert find_checkpoint(tmp_path / "elsewhere") is None


@pytest.mark.slow
def test_resume_auto_starts_fresh_then_continues_in_the_same_mlflow_run(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    first = train(compose_config("train", tiny_overrides + ["resume=auto", "trainer.max_steps=3"]), run_dir)
    assert first["step"] == 3
    again = train(compose_config("train", tiny_overrides + ["resume=auto"]), run_dir)
    assert again["step"] == 6 and again["run_id"] == first["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["resume_changed_keys"] == "trainer.max_steps"
    assert [s for s, _ in history(client, first["run_id"], "train/l1")] == [1, 2, 3, 4, 5, 6]
    assert len(client.search_runs([run.info.experiment_id])) == 1


# -- config checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.discriminator.holdback=1.5", "schedule.discriminator.holdback"),
        ("schedule.discriminator.every=0", "schedule.discriminator.every"),
        ("schedule.lr_g.policy=linear", "schedule.lr_g.policy"),
        ("schedule.lr_d.milestones=[5,2]", "schedule.lr_d.milestones"),
        ("trainer.grad_accumulation=0", "trainer.grad_accumulation"),
        ("trainer.checkpoint.keep_last=0", "trainer.checkpoint.keep_last"),
        ("trainer.max_nonfinite=0", "trainer.max_nonfinite"),
    ],
)
def test_engine_keys_are_checked(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate_training_config(compose_config("train", [override]))


def test_extra_discriminator_steps_and_accumulation_do_not_mix():
    cfg = compose_config("train", ["schedule.discriminator.steps_per_g=2", "trainer.grad_accumulation=2"])
    with pytest.raises(ConfigError, match="steps_per_g > 1 cannot be combined"):
        validate_training_config(cfg)


def test_paper_schedule_is_the_published_recipe():
    cfg = compose_config("train", ["schedule=paper"])
    assert cfg.schedule.pretrain_steps == 150_000 and cfg.schedule.ramp.steps == 50_000
    assert cfg.schedule.ema.decay == 0.999 and cfg.loss.weights.adversarial == 0.01


@pytest.mark.slow
def test_compiled_channels_last_run_exports_plain_weights(tmp_path, tiny_overrides):
    from srgan.engine.checkpoint import load_model

    overrides = ["trainer.compile=true", "trainer.channels_last=true", "trainer.max_steps=3", "trainer.val_every=0"]
    overrides += ["schedule.pretrain_steps=1", "schedule.ramp.steps=1"]
    result = train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    assert result["step"] == 3
    model = load_model(result["run_dir"])  # no torch.compile prefixes in the released weights
    assert model.generator(torch.rand(1, 4, 8, 8)).shape == (1, 4, 32, 32)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    assert all(math.isfinite(v) for _, v in history(client, result["run_id"], "train/d_loss"))


def test_optimizers_are_configurable_per_network():
    from hydra.utils import instantiate

    cfg = compose_config(
        "train",
        [
            "schedule.optimizer_g._target_=torch.optim.AdamW",
            "+schedule.optimizer_g.weight_decay=0.01",
            "schedule.optimizer_d.betas=[0.5,0.999]",
            "schedule.optimizer_d.lr=4e-4",
        ],
    )
    validate_training_config(cfg)
    g = instantiate(cfg.schedule.optimizer_g, _convert_="all")([torch.nn.Parameter(torch.zeros(1))])
    d = instantiate(cfg.schedule.optimizer_d, _convert_="all")([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(g, torch.optim.AdamW) and g.param_groups[0]["weight_decay"] == 0.01
    assert type(d) is torch.optim.Adam and d.param_groups[0]["betas"] == (0.5, 0.999)
    assert d.param_groups[0]["lr"] == 4e-4

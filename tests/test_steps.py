"""Invariants of one optimisation step (engine.steps): what each update may touch, and the one
dispatch (``update``) the loop and the benchmarks share."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from srgan.engine import steps
from srgan.losses import CompositeLoss, GANLoss, L1Loss
from srgan.models.discriminators import SRGANDiscriminator
from srgan.models.generators import RCABGenerator


def _nets(seed: int = 0, gan_type: str = "vanilla"):
    torch.manual_seed(seed)
    g = RCABGenerator(3, 3, 2, n_channels=8, n_blocks=2, reduction=4)
    d = SRGANDiscriminator(3, base_channels=8, n_stages=2, head_features=16)
    loss = CompositeLoss({"l1": 1.0, "adversarial": 0.1}, {"l1": L1Loss()}, GANLoss(gan_type=gan_type))
    opt_g = torch.optim.SGD(g.parameters(), lr=0.05)
    opt_d = torch.optim.SGD(d.parameters(), lr=0.05)
    return SimpleNamespace(generator=g, discriminator=d, loss=loss, optimizer_g=opt_g, optimizer_d=opt_d)


def _batch(seed: int = 1):
    torch.manual_seed(seed)
    return {"lr": torch.rand(2, 3, 8, 8), "hr": torch.rand(2, 3, 16, 16)}


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _unchanged(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("gan_type", ["vanilla", "ragan"])
def test_generator_step_leaves_the_discriminator_untouched(gan_type):
    nets, accelerator = _nets(gan_type=gan_type), Accelerator(cpu=True)
    d_before, g_before = _snapshot(nets.discriminator), _snapshot(nets.generator)
    sr, stats, stepped = steps.generator_step(
        accelerator, nets.generator, nets.discriminator, nets.loss, nets.optimizer_g, _batch(), 0.5
    )
    assert stepped and "g_adversarial" in stats  # the adversarial term went through D
    assert all(p.grad is None for p in nets.discriminator.parameters())
    assert _unchanged(d_before, nets.discriminator)
    assert all(p.requires_grad for p in nets.discriminator.parameters())  # frozen for the step only
    assert not _unchanged(g_before, nets.generator)
    assert not sr.requires_grad


def test_discriminator_step_sees_a_detached_fake():
    nets, accelerator = _nets(), Accelerator(cpu=True)
    batch = _batch()
    sr = nets.generator(batch["lr"])  # still attached to G's graph
    assert sr.requires_grad
    d_before, g_before = _snapshot(nets.discriminator), _snapshot(nets.generator)
    stats, stepped = steps.discriminator_step(
        accelerator, nets.discriminator, nets.loss, nets.optimizer_d, batch["hr"], sr
    )
    assert stepped and "d_loss" in stats
    assert all(p.grad is None for p in nets.generator.parameters())  # nothing flowed back into G
    assert _unchanged(g_before, nets.generator)
    assert not _unchanged(d_before, nets.discriminator)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
def test_update_holdback_skips_d_on_both_paths(fused):
    nets, accelerator = _nets(), Accelerator(cpu=True)
    d_before = _snapshot(nets.discriminator)
    options = {"fused": fused, "grad_clip": None}
    held = steps.update(accelerator, nets, _batch(), 0.1, train_d=True, holdback=-2.0, **options)  # any gap > -2
    assert held.held_back and not held.d_trained and not held.d_stepped and held.g_stepped
    assert "d_loss" not in held.stats
    assert _unchanged(d_before, nets.discriminator)
    kept = steps.update(accelerator, nets, _batch(), 0.1, train_d=True, holdback=2.0, **options)
    assert not kept.held_back and kept.d_trained and kept.d_stepped and "d_loss" in kept.stats
    assert not _unchanged(d_before, nets.discriminator)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
def test_update_without_d_due_trains_g_only(fused):
    nets, accelerator = _nets(), Accelerator(cpu=True)
    d_before, g_before = _snapshot(nets.discriminator), _snapshot(nets.generator)
    result = steps.update(accelerator, nets, _batch(), 0.1, train_d=False, holdback=0.5, fused=fused, grad_clip=None)
    assert result.g_stepped and not result.d_trained and not result.d_stepped and not result.held_back
    assert _unchanged(d_before, nets.discriminator)
    assert not _unchanged(g_before, nets.generator)


def test_update_fused_and_separate_paths_move_the_networks_alike():
    accelerator = Accelerator(cpu=True)
    results = []
    for fused in (True, False):
        nets = _nets(seed=3)
        update = steps.update(
            accelerator, nets, _batch(), 0.1, train_d=True, holdback=None, fused=fused, grad_clip=None
        )
        results.append((nets, update))
    (a, ra), (b, rb) = results
    assert ra.d_stepped and rb.d_stepped
    for x, y in zip(
        [*a.generator.parameters(), *a.discriminator.parameters()],
        [*b.generator.parameters(), *b.discriminator.parameters()],
    ):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ra.stats["g_total"], rb.stats["g_total"], rtol=1e-4, atol=1e-6)

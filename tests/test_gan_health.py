"""The default (srgan) discriminator learns from its first steps, and GANHealth flags a D that does not."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn import functional as F

from srgan.engine.health import GANHealth
from srgan.losses.adversarial import GANLoss
from srgan.models.discriminators import init_for_leaky_relu
from tests.conftest import compose_config


def demo_discriminator(seed: int, overrides: tuple[str, ...] = ()) -> nn.Module:
    """The discriminator `make demo` trains (discriminator=srgan at the demo's width), or another one."""
    cfg = compose_config("train", ["experiment=demo", *overrides])
    assert overrides or cfg.discriminator._target_.endswith("SRGANDiscriminator")
    torch.manual_seed(seed)
    return instantiate(cfg.discriminator, _convert_="all")


def real_and_sr(generator: torch.Generator, n: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflectance-like HR (a smooth positive field plus fine texture) and an SR stand-in: its 4x box
    mean upsampled back with bicubic, as a generator does at the start of the adversarial phase.
    Both have the same mean, so only texture tells them apart."""
    x = torch.arange(size, dtype=torch.float32)
    field = 0.12 + 0.05 * torch.sin(x / 5.0 + 6 * torch.rand(n, 4, 1, 1, generator=generator))
    hr = field + 0.05 * torch.randn(n, 4, size, size, generator=generator)
    return hr, F.interpolate(F.avg_pool2d(hr, 4), scale_factor=4, mode="bicubic", align_corners=False)


@pytest.mark.parametrize("overrides", [(), ("discriminator=esrgan", "discriminator.norm=none")])
def test_discriminator_logits_depend_on_the_input_at_initialisation(overrides):
    # torch's default init kept ~0.42 of the signal per layer: after 10 layers the logits of HR and of
    # its blurred version differed by ~1e-6 (all bias), so D(y) = D(G(x)) and D's gradient cancelled.
    discriminator = demo_discriminator(0, overrides)
    hr, sr = real_and_sr(torch.Generator().manual_seed(0), size=32)
    with torch.no_grad():
        difference = (discriminator(hr) - discriminator(sr)).abs().mean()
    assert difference > 1e-3


def test_default_discriminator_separates_real_from_sr_in_a_few_steps():
    seed = 0
    discriminator = demo_discriminator(seed)
    cfg = compose_config("train", ["experiment=demo"])
    lr, betas = cfg.schedule.optimizer_d.lr, tuple(cfg.schedule.optimizer_d.betas)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    gan = GANLoss("vanilla")
    data = torch.Generator().manual_seed(seed)
    for _ in range(15):
        hr, sr = real_and_sr(data)
        real, fake = discriminator(torch.cat([hr, sr])).split(hr.shape[0])
        optimizer.zero_grad()
        gan.discriminator_loss(real, fake).backward()
        optimizer.step()
    hr, sr = real_and_sr(data)  # held out
    with torch.no_grad():
        gap = torch.sigmoid(discriminator(hr)).mean() - torch.sigmoid(discriminator(sr)).mean()
    # Before the initialisation fix: 0.0000 after 15 steps (and after 300 on the Sentinel-2 sample).
    assert gap > 0.015


@torch.no_grad()
def test_init_for_leaky_relu_keeps_the_signal_through_depth():
    torch.manual_seed(0)
    a, b = torch.randn(64, 256), torch.randn(64, 256)

    def depth_gain(init: bool) -> float:
        """How much of the difference between two inputs is left after 10 LeakyReLU layers."""
        x, y = a, b
        for _ in range(10):
            layer = nn.Linear(256, 256)
            layer = init_for_leaky_relu(layer) if init else layer
            x, y = F.leaky_relu(layer(x), 0.2), F.leaky_relu(layer(y), 0.2)
        return float((x - y).std() / (a - b).std())

    assert 0.3 < depth_gain(True) < 3.0
    assert depth_gain(False) < 1e-3  # torch's default: why the srgan D's logits were all bias


def stuck_logs(real: float = 0.5, fake: float = 0.5, grad: float = 1e-3) -> dict[str, float]:
    return {"train/d_real_prob": real, "train/d_fake_prob": fake, "train/d_grad_norm": grad}


def test_health_flags_a_discriminator_that_does_not_learn():
    health = GANHealth(patience=3)
    # What the unfixed srgan D logged on the demo: 0.500 / 0.500, d_grad_norm ~1e-3.
    raised = [health.update(step, stuck_logs(0.5007, 0.5004)) for step in range(10, 60, 10)]
    assert [list(r) for r in raised] == [[], [], ["discriminator_not_learning"], [], []]
    message = health.warnings["discriminator_not_learning"]
    assert message.startswith("step 30: D(y) = 0.5007, D(G(x)) = 0.5004") and "d_grad_norm = 0.001" in message
    # It re-arms once D separates, and a D that keeps separating is never flagged.
    assert health.update(60, stuck_logs(0.6, 0.4, 2.0)) == {}
    assert health.counts["discriminator_not_learning"] == 0
    learning = GANHealth(patience=1)
    assert all(learning.update(s, stuck_logs(0.5 + 0.05 * s, 0.5 - 0.05 * s, 1.0)) == {} for s in range(1, 8))


def test_health_ignores_steps_without_a_discriminator_and_non_probabilistic_losses():
    health = GANHealth(patience=1)
    assert health.update(1, {"train/l1": 0.1}) == {}  # pretraining: D does not train, logs no D stats
    assert GANHealth(patience=1, probabilistic=False).update(1, stuck_logs()) == {}
    # An inverted D (fake scored above real) does not tell real from SR either.
    assert list(health.update(2, stuck_logs(0.3, 0.7, 5.0))) == ["discriminator_not_learning"]
    with pytest.raises(ValueError, match="min_prob_gap"):
        GANHealth(min_prob_gap=1.5)

"""One optimisation step of the generator and of the discriminator."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn

from srgan.losses.composite import CompositeLoss


def _clip(accelerator: Accelerator, model: nn.Module, max_norm: float | None) -> None:
    # Under gradient accumulation the gradients are only complete on the syncing micro-step.
    if max_norm and accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), max_norm)


def generator_step(
    accelerator: Accelerator,
    generator: nn.Module,
    discriminator: nn.Module,
    loss: CompositeLoss,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    adversarial_weight: float,
    grad_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Update G on content losses plus the weighted adversarial loss; returns SR (detached) and stats.

    ``discriminator`` must be the unwrapped module: its parameters are frozen for this step, and
    going around DDP keeps D's gradient-bucket bookkeeping untouched by G's backward pass.
    """
    with accelerator.autocast():
        sr = generator(batch["lr"])
        total, stats = loss.content(sr, batch["hr"])
        if adversarial_weight > 0:
            discriminator.requires_grad_(False)
            try:
                real_logits = None
                if loss.adversarial.generator_needs_real:
                    with torch.no_grad():
                        real_logits = discriminator(batch["hr"])
                g_adv = loss.adversarial.generator_loss(discriminator(sr), real_logits)
            finally:
                discriminator.requires_grad_(True)
            total = total + adversarial_weight * g_adv
            stats["g_adversarial"] = g_adv.detach()
    stats["g_total"] = total.detach()
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(total)
    _clip(accelerator, generator, grad_clip)
    optimizer.step()
    return sr.detach(), stats


def discriminator_step(
    accelerator: Accelerator,
    discriminator: nn.Module,
    loss: CompositeLoss,
    optimizer: torch.optim.Optimizer,
    hr: torch.Tensor,
    sr: torch.Tensor,
    grad_clip: float | None = None,
) -> dict[str, torch.Tensor]:
    """Update D on real HR against detached SR; returns the losses and mean probabilities D(y), D(G(x)).

    Real, fake and (for WGAN-GP) interpolated images go through D in one forward pass, so DDP
    reduces D's gradients once; the R1 and gradient penalties differentiate that same pass.
    """
    adversarial = loss.adversarial
    n = hr.shape[0]
    real = hr.detach().requires_grad_(adversarial.r1_weight > 0)
    fake = sr.detach()
    inputs = [real, fake]
    interp = None
    if adversarial.gp_weight > 0:
        alpha = torch.rand(n, 1, 1, 1, device=hr.device, dtype=hr.dtype)
        interp = (alpha * real.detach() + (1 - alpha) * fake).requires_grad_(True)
        inputs.append(interp)
    with accelerator.autocast():
        logits = discriminator(torch.cat(inputs))
    chunks = logits.float().split(n)
    real_logits, fake_logits = chunks[0], chunks[1]
    d_loss = adversarial.discriminator_loss(real_logits, fake_logits)
    penalties = adversarial.penalties(real_logits, real, chunks[2] if interp is not None else None, interp)
    total = d_loss + sum(penalties.values())
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(total)
    _clip(accelerator, discriminator, grad_clip)
    optimizer.step()
    stats = {
        "d_loss": d_loss.detach(),
        "d_real_prob": torch.sigmoid(real_logits).mean().detach(),
        "d_fake_prob": torch.sigmoid(fake_logits).mean().detach(),
    }
    stats.update({f"d_{k}": v.detach() for k, v in penalties.items()})
    return stats

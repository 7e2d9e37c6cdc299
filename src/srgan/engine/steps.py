"""One optimisation step of the generator and of the discriminator."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from torch import nn

from srgan.losses.composite import CompositeLoss


def _apply(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    grad_clip: float | None,
) -> tuple[bool, torch.Tensor | None]:
    """Backward, then (when gradients are synced) check, clip and step; returns (stepped, grad norm).

    A non-finite loss or gradient on any process skips the optimizer step everywhere, so the
    processes stay identical. The check is one scalar read per step; the gradient norm comes
    from the clipping call (an infinite threshold only measures). Under gradient accumulation
    the gradients are complete only on the syncing micro-step, so nothing is checked before it.
    """
    accelerator.backward(loss)
    if not accelerator.sync_gradients:
        return True, None
    norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite.float().reshape(1), "sum") == accelerator.num_processes
    stepped = bool(finite)
    if stepped:
        optimizer.step()
    # After the step, not before the backward: Accelerate's optimizer only zeroes on the syncing
    # micro-step, which must not wipe the micro-batches accumulated before it.
    optimizer.zero_grad(set_to_none=True)
    return stepped, norm.detach()


def generator_step(
    accelerator: Accelerator,
    generator: nn.Module,
    discriminator: nn.Module,
    loss: CompositeLoss,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    adversarial_weight: float,
    grad_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], bool]:
    """Update G on content losses plus the weighted adversarial loss.

    Returns SR (detached), the stats, and whether the optimizer stepped (False: non-finite, skipped).
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
    stepped, norm = _apply(accelerator, generator, optimizer, total, grad_clip)
    if norm is not None:
        stats["g_grad_norm"] = norm
    return sr.detach(), stats, stepped


def discriminator_step(
    accelerator: Accelerator,
    discriminator: nn.Module,
    loss: CompositeLoss,
    optimizer: torch.optim.Optimizer,
    hr: torch.Tensor,
    sr: torch.Tensor,
    grad_clip: float | None = None,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Update D on real HR against detached SR; returns the stats and whether the optimizer stepped.

    The stats hold the losses and the mean probabilities D(y), D(G(x)). Real, fake and (for
    WGAN-GP) interpolated images go through D in one forward pass, so DDP reduces D's gradients
    once; the R1 and gradient penalties differentiate that same pass.
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
    stepped, norm = _apply(accelerator, discriminator, optimizer, total, grad_clip)
    stats = {
        "d_loss": d_loss.detach(),
        "d_real_prob": torch.sigmoid(real_logits).mean().detach(),
        "d_fake_prob": torch.sigmoid(fake_logits).mean().detach(),
    }
    if norm is not None:
        stats["d_grad_norm"] = norm
    stats.update({f"d_{k}": v.detach() for k, v in penalties.items()})
    return stats, stepped


@torch.no_grad()
def discriminator_confidence(
    accelerator: Accelerator, discriminator: nn.Module, hr: torch.Tensor, sr: torch.Tensor
) -> float:
    """Mean D(y) - mean D(G(x)) on this batch, averaged over processes (so all agree on holdback)."""
    with accelerator.autocast():
        logits = discriminator(torch.cat([hr, sr])).float()
    real, fake = torch.sigmoid(logits).split(hr.shape[0])
    gap = (real.mean() - fake.mean()).reshape(1)
    return float(accelerator.reduce(gap, "mean")) if accelerator.num_processes > 1 else float(gap)

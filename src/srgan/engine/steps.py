"""One optimisation step of the generator and of the discriminator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from srgan.losses.adversarial import GANLoss
from srgan.losses.composite import CompositeLoss


def _finish(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    grad_clip: float | None,
) -> tuple[bool, torch.Tensor | None]:
    """After the backward pass: (when gradients are synced) check, clip and step; returns (stepped, grad norm).

    A non-finite loss or gradient on any process skips the optimizer step everywhere, so the
    processes stay identical. The check is one scalar read per step; the gradient norm comes
    from the clipping call (an infinite threshold only measures). Under gradient accumulation
    the gradients are complete only on the syncing micro-step, so nothing is checked before it.
    """
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


def content_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What the content terms take from a batch besides SR and HR: LR (for LR consistency), HR's
    validity (nodata is left out of the loss) and the batch's own drawn degradation, if any."""
    return {"lr": batch.get("lr"), "valid": batch.get("hr_valid"), "degrade": batch.get("degrade")}


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
        sr = loss.masked(generator(batch["lr"]), batch["hr"], batch.get("hr_valid"))
        total, stats = loss.content(sr, batch["hr"], **content_inputs(batch))
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
    accelerator.backward(total)
    stepped, norm = _finish(accelerator, generator, optimizer, total, grad_clip)
    if norm is not None:
        stats["g_grad_norm"] = norm
    return sr.detach(), stats, stepped


def _discriminator_inputs(
    adversarial: GANLoss, hr: torch.Tensor, fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Real HR (requiring grad for R1) and, for WGAN-GP, interpolates between it and detached ``fake``."""
    real = hr.detach().requires_grad_(adversarial.r1_weight > 0)
    interp = None
    if adversarial.gp_weight > 0:
        alpha = torch.rand(hr.shape[0], 1, 1, 1, device=hr.device, dtype=hr.dtype)
        interp = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    return real, interp


def _discriminator_losses(
    adversarial: GANLoss,
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    interp_logits: torch.Tensor | None,
    real: torch.Tensor,
    interp: torch.Tensor | None,
    train: bool = True,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """D's total loss (None when ``train`` is false) and its stats: losses, mean D(y) and D(G(x))."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    stats = {
        "d_real_prob": torch.sigmoid(real_logits).mean().detach(),
        "d_fake_prob": torch.sigmoid(fake_logits).mean().detach(),
    }
    if not train:
        return None, stats
    d_loss = adversarial.discriminator_loss(real_logits, fake_logits)
    penalties = adversarial.penalties(real_logits, real, interp_logits, interp)
    stats["d_loss"] = d_loss.detach()
    stats.update({f"d_{k}": v.detach() for k, v in penalties.items()})
    return d_loss + sum(penalties.values()), stats


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
    fake = sr.detach()
    real, interp = _discriminator_inputs(loss.adversarial, hr, fake)
    n = hr.shape[0]
    with accelerator.autocast():
        logits = discriminator(torch.cat([real, fake] if interp is None else [real, fake, interp])).split(n)
    total, stats = _discriminator_losses(
        loss.adversarial, logits[0], logits[1], logits[2] if interp is not None else None, real, interp
    )
    accelerator.backward(total)
    stepped, norm = _finish(accelerator, discriminator, optimizer, total, grad_clip)
    if norm is not None:
        stats["d_grad_norm"] = norm
    return stats, stepped


@dataclass
class GANStepResult:
    """What :func:`gan_step` did: SR (detached), the stats, and which updates happened.

    ``g_adversarial_from_d_pass``: G's adversarial gradient came from D's own backward pass,
    rescaled per sample (False: it took a backward pass of its own through D, or there was none).
    """

    sr: torch.Tensor
    stats: dict[str, torch.Tensor]
    g_stepped: bool
    d_trained: bool
    d_stepped: bool
    g_adversarial_from_d_pass: bool = False


# Largest |G's logit gradient / D's logit gradient| that is rescaled instead of back-propagated again:
# a D gradient this many times smaller still leaves D's internal gradients far above fp32 / bf16 underflow.
MAX_LOGIT_GRAD_RATIO = 1e12


def gan_step(
    accelerator: Accelerator,
    generator: nn.Module,
    discriminator: nn.Module,
    loss: CompositeLoss,
    optimizer_g: torch.optim.Optimizer,
    optimizer_d: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    adversarial_weight: float,
    grad_clip: float | None = None,
    holdback: float | None = None,
    train_d: bool = True,
) -> GANStepResult:
    """The generator update and the discriminator update on one batch, sharing D's passes.

    :func:`generator_step` followed by :func:`discriminator_step` on the same batch runs D on SR
    twice (for G's loss, then with real HR for D's) and back-propagates through it twice; neither
    pass changes D. Here D runs once on real HR (with the WGAN-GP interpolates) and once on SR,
    and both optimizers step after both backward passes: the gradients are those of the two-step
    sequence, for a discriminator without batch norm (whose train-mode statistics would be taken
    over real HR alone instead of real and SR together).

    G's adversarial gradient at SR needs ``dl_i/dSR_i`` (``l_i``: sample i's logit) weighted by
    G's logit gradient ``gG_i``; D's backward pass already carries ``dl_i/dSR_i`` weighted by D's
    logit gradient ``gD_i`` down to SR. With one logit per sample, G's gradient at SR is that,
    times ``gG_i / gD_i``: D's backward is extended to SR (one extra layer's input gradient) and G
    back-propagates from SR, instead of a second backward pass through D. Where that ratio cannot
    be used (a zero D gradient, as hinge gives for confidently fake samples; a ratio above
    ``MAX_LOGIT_GRAD_RATIO``; patch logits; D not trained this step) G's gradient at SR is
    back-propagated through D on its own, as before. Under fp16 (loss scaling must reach G's pass
    through D) G's loss is back-propagated through D directly.

    ``discriminator`` is the wrapped module: DDP reduces D's gradients in D's backward pass (the two
    forward passes meet in each parameter's single gradient accumulation), G's in G's.

    ``holdback``: skip D's update when the mean D(y) - D(G(x)) on this batch, averaged over the
    processes, exceeds it; ``train_d=False`` skips it outright (later micro-batches of a step whose
    first micro-batch decided).
    """
    adversarial = loss.adversarial
    # fp16: G's loss goes through D in G's own backward pass, scaled as accelerate scales it.
    through_d = adversarial_weight > 0 and accelerator.mixed_precision == "fp16"
    passes = _shared_forward(accelerator, generator, discriminator, loss, batch, adversarial_weight, through_d)
    if train_d and holdback is not None:
        train_d = probability_gap(accelerator, passes.real_logits, passes.fake_logits) <= holdback
    d_total, d_stats = _discriminator_losses(
        adversarial, passes.real_logits, passes.fake_logits, passes.interp_logits, passes.real, passes.interp, train_d
    )
    stats, total, g_adv = passes.stats, passes.content, None
    if adversarial_weight > 0:
        g_adv = adversarial.generator_loss(passes.fake_logits, passes.real_logits)
        total = total + adversarial_weight * g_adv
        stats["g_adversarial"] = g_adv.detach()
    stats["g_total"] = total.detach()
    stats.update(d_stats)
    weighted = None if g_adv is None else adversarial_weight * g_adv
    from_d_pass = _shared_backward(accelerator, generator, discriminator, passes, total, d_total, weighted)
    if g_adv is not None:
        # Logged as train/g_adv_second_pass: the share of steps that paid for a second pass through D.
        stats["g_adv_second_pass"] = torch.tensor(0.0 if from_d_pass else 1.0, device=total.device)
    g_ok, g_norm = _finish(accelerator, generator, optimizer_g, total, grad_clip)
    if g_norm is not None:
        stats["g_grad_norm"] = g_norm
    d_ok = False
    if d_total is not None:
        d_ok, d_norm = _finish(accelerator, discriminator, optimizer_d, d_total, grad_clip)
        if d_norm is not None:
            stats["d_grad_norm"] = d_norm
    return GANStepResult(passes.sr.detach(), stats, g_ok, train_d, d_ok, from_d_pass)


@dataclass
class _SharedPasses:
    """The forward passes :func:`gan_step` shares: G on LR, the content losses, D on real and on SR."""

    sr: torch.Tensor
    content: torch.Tensor
    stats: dict[str, torch.Tensor]
    real: torch.Tensor
    interp: torch.Tensor | None
    fake: torch.Tensor
    real_logits: torch.Tensor
    fake_logits: torch.Tensor
    interp_logits: torch.Tensor | None
    through_d: bool


def _shared_forward(
    accelerator: Accelerator,
    generator: nn.Module,
    discriminator: nn.Module,
    loss: CompositeLoss,
    batch: dict[str, torch.Tensor],
    adversarial_weight: float,
    through_d: bool,
) -> _SharedPasses:
    """SR, its content losses, and D's logits on real HR (with the WGAN-GP interpolates) and on SR;
    ``fake`` is SR itself when G's loss goes through D (``through_d``), else a detached leaf."""
    hr = batch["hr"]
    with accelerator.autocast():
        sr = loss.masked(generator(batch["lr"]), hr, batch.get("hr_valid"))
        content, stats = loss.content(sr, hr, **content_inputs(batch))
        real, interp = _discriminator_inputs(loss.adversarial, hr, sr)
        fake = sr if through_d else sr.detach().requires_grad_(adversarial_weight > 0)
        real_logits = discriminator(real if interp is None else torch.cat([real, interp]))
        fake_logits = discriminator(fake)
    interp_logits = None
    if interp is not None:
        real_logits, interp_logits = real_logits.split(hr.shape[0])
    return _SharedPasses(sr, content, stats, real, interp, fake, real_logits, fake_logits, interp_logits, through_d)


def _shared_backward(
    accelerator: Accelerator,
    generator: nn.Module,
    discriminator: nn.Module,
    passes: _SharedPasses,
    total: torch.Tensor,
    d_total: torch.Tensor | None,
    g_adv: torch.Tensor | None,
) -> bool:
    """D's backward pass (carried on to SR when G needs it) and G's; returns whether G's adversarial
    gradient came from D's pass (``total``: G's loss; ``g_adv``: its weighted adversarial term, None
    without one)."""
    sr, fake, fake_logits = passes.sr, passes.fake, passes.fake_logits
    d_logit_grad: list[torch.Tensor] = []
    if d_total is not None:
        inputs = list(discriminator.parameters())
        if g_adv is not None and not passes.through_d:
            inputs.append(fake)  # carry D's backward pass on to SR for G's gradient
            fake_logits.register_hook(d_logit_grad.append)
        accelerator.backward(d_total, inputs=inputs, retain_graph=g_adv is not None)
    if g_adv is None or passes.through_d:
        accelerator.backward(total, inputs=list(generator.parameters()))
        return False
    (g_logit_grad,) = torch.autograd.grad(g_adv, fake_logits, retain_graph=True)
    sr_grad = _rescaled_input_grad(fake, fake_logits, d_logit_grad, g_logit_grad)
    from_d_pass = sr_grad is not None
    if sr_grad is None:
        (sr_grad,) = torch.autograd.grad(fake_logits, fake, g_logit_grad)
    # Content losses plus <SR, dLoss_adv/dSR>: the same gradient for G, through accelerate's scaling.
    accelerator.backward(
        passes.content + (sr.float() * sr_grad.detach().float()).sum(), inputs=list(generator.parameters())
    )
    return from_d_pass


def _rescaled_input_grad(
    fake: torch.Tensor, fake_logits: torch.Tensor, d_logit_grad: list[torch.Tensor], g_logit_grad: torch.Tensor
) -> torch.Tensor | None:
    """G's adversarial gradient at SR from D's backward pass (``fake.grad``), or None where it can't be.

    ``fake.grad`` holds ``gD_i * dl_i/dSR_i`` with ``gD_i`` the logit gradient that reached D's
    output in that pass (``d_logit_grad``, as accelerate scaled it); G needs ``gG_i * dl_i/dSR_i``.
    """
    n = fake.shape[0]
    if not d_logit_grad or fake.grad is None or fake_logits.numel() != n:
        return None
    d_grad = d_logit_grad[0].detach().float().reshape(n)
    ratio = g_logit_grad.detach().float().reshape(n) / d_grad
    usable = torch.isfinite(ratio).all() & (ratio.abs() <= MAX_LOGIT_GRAD_RATIO).all()  # a zero gD: not finite
    if not bool(usable):
        return None
    return fake.grad.float() * ratio.reshape(n, *([1] * (fake.dim() - 1)))  # fp32: no bf16 rounding of the ratio


def probability_gap(accelerator: Accelerator, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> float:
    """Mean D(y) - mean D(G(x)) as probabilities, averaged over processes (so all agree on holdback)."""
    gap = torch.sigmoid(real_logits.detach().float()).mean() - torch.sigmoid(fake_logits.detach().float()).mean()
    gap = gap.reshape(1)
    return float(accelerator.reduce(gap, "mean")) if accelerator.num_processes > 1 else float(gap)


@torch.no_grad()
def discriminator_confidence(
    accelerator: Accelerator, discriminator: nn.Module, hr: torch.Tensor, sr: torch.Tensor
) -> float:
    """:func:`probability_gap` of a fresh D pass on this batch (the separate-step path's holdback test)."""
    with accelerator.autocast():
        logits = discriminator(torch.cat([hr, sr]))
    real, fake = logits.split(hr.shape[0])
    return probability_gap(accelerator, real, fake)


@dataclass
class Update:
    """What :func:`update` did on one micro-batch of a generator step.

    ``d_trained``: D was updated on it (False when it was not due, or held back); ``held_back``:
    the holdback test skipped D's update (counted as ``train/d_held_back``).
    """

    stats: dict[str, torch.Tensor]
    g_stepped: bool
    d_trained: bool
    d_stepped: bool
    held_back: bool


def update(
    accelerator: Accelerator,
    parts: Any,
    batch: dict[str, torch.Tensor],
    adversarial_weight: float,
    *,
    train_d: bool,
    holdback: float | None,
    fused: bool,
    grad_clip: float | None,
) -> Update:
    """One micro-batch of a generator step as ``srgan-train`` runs it, and as the benchmarks time it.

    ``parts`` (:class:`srgan.engine.loop.Parts`: the networks, their optimizers, the loss).
    With D due (``train_d``) and ``fused``: :func:`gan_step` (G's and D's updates from shared D
    passes); else :func:`generator_step` then, when due, :func:`discriminator_step` on the same SR.
    ``holdback`` (the first micro-batch of a step only; None for the rest): D's update is skipped
    when D(y) - D(G(x)) on this batch exceeds it; the fused step reads it from its own D pass, the
    separate path from an extra no-grad pass.
    """
    if train_d and fused:
        result = gan_step(
            accelerator,
            parts.generator,
            parts.discriminator,
            parts.loss,
            parts.optimizer_g,
            parts.optimizer_d,
            batch,
            adversarial_weight,
            grad_clip,
            holdback=holdback,
            train_d=train_d,
        )
        held = holdback is not None and not result.d_trained
        return Update(result.stats, result.g_stepped, result.d_trained, result.d_stepped, held)
    d_module = accelerator.unwrap_model(parts.discriminator)
    sr, stats, g_ok = generator_step(
        accelerator, parts.generator, d_module, parts.loss, parts.optimizer_g, batch, adversarial_weight, grad_clip
    )
    held = train_d and holdback is not None
    held = held and discriminator_confidence(accelerator, d_module, batch["hr"], sr) > holdback
    d_ok = False
    if train_d and not held:
        d_stats, d_ok = discriminator_step(
            accelerator, parts.discriminator, parts.loss, parts.optimizer_d, batch["hr"], sr, grad_clip
        )
        stats.update(d_stats)
    return Update(stats, g_ok, train_d and not held, d_ok, held)

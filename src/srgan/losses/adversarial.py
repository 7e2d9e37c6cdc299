"""Adversarial losses behind one API, for every discriminator output shape (image, patch, pixel).

``discriminator_loss(real, fake)`` and ``generator_loss(fake, real)`` take raw logits;
``penalties`` computes the gradient penalty (WGAN-GP) and the R1 penalty from logits whose inputs
required gradients, so that the training step needs a single discriminator forward pass.

GAN types:
- ``vanilla``: non-saturating BCE with logits (Goodfellow et al. 2014; SRGAN).
- ``lsgan``: least squares towards the targets (Mao et al. 2017).
- ``hinge``: ``relu(1 - D(y)) + relu(1 + D(G(x)))`` for D, ``-D(G(x))`` for G (Lim & Ye 2017).
- ``wgan_gp``: Wasserstein critic with gradient penalty on interpolates (Gulrajani et al. 2017).
- ``ragan``: relativistic average BCE (Jolicoeur-Martineau 2018; ESRGAN): each side is judged
  relative to the mean logit of the other, and G's loss needs real logits too.

``real_label`` / ``fake_label`` smooth the discriminator's BCE / least-squares targets (the
generator always aims at 1); ``r1_weight`` adds ``r1_weight / 2 * E||grad D(y)||^2`` on real data
(Mescheder et al. 2018).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

GAN_TYPES = ("vanilla", "lsgan", "hinge", "wgan_gp", "ragan")


class GANLoss(nn.Module):
    def __init__(
        self,
        gan_type: str = "vanilla",
        real_label: float = 1.0,
        fake_label: float = 0.0,
        gp_weight: float = 10.0,
        r1_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if gan_type not in GAN_TYPES:
            raise ValueError(f"loss.adversarial.gan_type must be one of {GAN_TYPES}, got {gan_type!r}")
        if gp_weight < 0 or r1_weight < 0:
            raise ValueError("loss.adversarial.gp_weight and r1_weight must be >= 0")
        if gan_type in ("hinge", "wgan_gp") and (real_label, fake_label) != (1.0, 0.0):
            raise ValueError(f"label smoothing has no meaning for gan_type={gan_type!r}; leave the labels at 1 and 0")
        self.gan_type = gan_type
        self.real_label = real_label
        self.fake_label = fake_label
        self.gp_weight = gp_weight if gan_type == "wgan_gp" else 0.0
        self.r1_weight = r1_weight

    @property
    def generator_needs_real(self) -> bool:
        """Whether :meth:`generator_loss` needs the discriminator's logits on real data."""
        return self.gan_type == "ragan"

    @property
    def needs_input_gradients(self) -> bool:
        """Whether the discriminator step must feed inputs that require gradients (GP or R1)."""
        return self.gp_weight > 0 or self.r1_weight > 0

    def _bce(self, logits: torch.Tensor, target: float) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real, fake = real.float(), fake.float()
        if self.gan_type == "vanilla":
            return 0.5 * (self._bce(real, self.real_label) + self._bce(fake, self.fake_label))
        if self.gan_type == "lsgan":
            return 0.5 * (((real - self.real_label) ** 2).mean() + ((fake - self.fake_label) ** 2).mean())
        if self.gan_type == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        if self.gan_type == "wgan_gp":
            return fake.mean() - real.mean()
        # ragan
        return 0.5 * (self._bce(real - fake.mean(), self.real_label) + self._bce(fake - real.mean(), self.fake_label))

    def generator_loss(self, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        fake = fake.float()
        if self.gan_type == "vanilla":
            return self._bce(fake, 1.0)
        if self.gan_type == "lsgan":
            return ((fake - 1.0) ** 2).mean()
        if self.gan_type in ("hinge", "wgan_gp"):
            return -fake.mean()
        if real is None:
            raise ValueError("gan_type='ragan' needs the discriminator's logits on real data for the generator loss")
        real = real.float().detach()
        return 0.5 * (self._bce(real - fake.mean(), 0.0) + self._bce(fake - real.mean(), 1.0))

    def penalties(
        self,
        real_logits: torch.Tensor,
        real_inputs: torch.Tensor,
        interp_logits: torch.Tensor | None = None,
        interp_inputs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted R1 and gradient penalties (graphs kept, so they train D when added to its loss)."""
        out: dict[str, torch.Tensor] = {}
        if self.r1_weight > 0:
            (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
            out["r1"] = 0.5 * self.r1_weight * grad.float().pow(2).flatten(1).sum(1).mean()
        if self.gp_weight > 0:
            if interp_logits is None or interp_inputs is None:
                raise ValueError("wgan_gp needs the logits of interpolated images")
            (grad,) = torch.autograd.grad(interp_logits.float().sum(), interp_inputs, create_graph=True)
            norm = grad.float().flatten(1).norm(2, dim=1)
            out["gp"] = self.gp_weight * ((norm - 1.0) ** 2).mean()
        return out

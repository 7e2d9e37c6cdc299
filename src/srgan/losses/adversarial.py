"""Adversarial losses behind one API: the discriminator's loss and the generator's loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

GAN_TYPES = ("vanilla",)


class GANLoss(nn.Module):
    """GAN objectives on raw discriminator logits.

    ``vanilla`` is the non-saturating BCE-with-logits loss of Goodfellow et al. (2014) as used by
    SRGAN. ``real_label``/``fake_label`` below 1 / above 0 give one-sided or two-sided label
    smoothing for the discriminator; the generator always aims at 1.
    """

    def __init__(self, gan_type: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        if gan_type not in GAN_TYPES:
            raise ValueError(f"loss.adversarial.gan_type must be one of {GAN_TYPES}, got {gan_type!r}")
        self.gan_type = gan_type
        self.real_label = real_label
        self.fake_label = fake_label

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real_logits, fake_logits = real_logits.float(), fake_logits.float()
        return 0.5 * (
            F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, self.real_label))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, self.fake_label))
        )

    def generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        fake_logits = fake_logits.float()
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

"""Discriminator families. All share ``in_channels`` and ``base_channels``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm as _spectral_norm


class SRGANDiscriminator(nn.Module):
    """SRGAN discriminator (Ledig et al. 2017): strided conv blocks and one real/fake logit.

    Unlike the original fixed 96/128 px input with a dense head sized for it, adaptive average
    pooling makes the head independent of the patch size.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        n_stages: int = 4,
        head_features: int = 1024,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if n_stages < 1:
            raise ValueError(f"n_stages must be >= 1, got {n_stages}")
        wrap = _spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [wrap(nn.Conv2d(in_channels, base_channels, 3, padding=1)), nn.LeakyReLU(0.2, True)]
        channels = base_channels
        for stage in range(n_stages):
            out = base_channels * 2 ** min(stage, 3)
            if stage > 0:
                layers += [wrap(nn.Conv2d(channels, out, 3, padding=1)), nn.LeakyReLU(0.2, True)]
            # Batch norm is left out: it couples samples in a batch and fights spectral norm.
            layers += [wrap(nn.Conv2d(out, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            wrap(nn.Linear(channels, head_features)),
            nn.LeakyReLU(0.2, True),
            wrap(nn.Linear(head_features, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return one logit per image, shape ``(batch, 1)``."""
        return self.head(self.features(x))

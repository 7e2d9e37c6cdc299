"""Building blocks shared by the generator and discriminator families."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

SUPPORTED_SCALES = (2, 3, 4, 8)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation style channel attention (Zhang et al. 2018, RCAN)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class RCAB(nn.Module):
    """Residual channel-attention block: conv-ReLU-conv, channel attention, scaled skip."""

    def __init__(self, channels: int, reduction: int = 16, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            ChannelAttention(channels, reduction),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


def icnr_(weight: torch.Tensor, factor: int) -> None:
    """ICNR initialisation (Aitken et al. 2017) of a conv that feeds ``PixelShuffle(factor)``.

    Every group of ``factor**2`` output channels that pixel shuffle spreads over one
    ``factor x factor`` cell gets the same kernel, so the shuffled output starts as a
    nearest-neighbour upsampling: no checkerboard pattern at step 0.
    """
    out_channels = weight.shape[0]
    sub = torch.empty(out_channels // factor**2, *weight.shape[1:])
    nn.init.kaiming_normal_(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(factor**2, dim=0))


class PixelShuffleUpsampler(nn.Sequential):
    """Conv + pixel shuffle stages: x2 stages for 2/4/8, a single x3 stage for 3."""

    def __init__(self, channels: int, scale: int) -> None:
        if scale not in SUPPORTED_SCALES:
            raise ValueError(f"scale must be one of {SUPPORTED_SCALES}, got {scale}")
        factors = [3] if scale == 3 else [2] * int(math.log2(scale))
        layers: list[nn.Module] = []
        for f in factors:
            conv = nn.Conv2d(channels, channels * f * f, 3, padding=1)
            icnr_(conv.weight, f)
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.PixelShuffle(f), nn.LeakyReLU(0.2, inplace=True)]
        super().__init__(*layers)


def upsample_image(x: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    """Interpolate an image batch by ``scale`` (the global-residual base of the generators)."""
    # align_corners=False puts LR pixel centres at the centres of the HR blocks they cover,
    # which matches block-averaging degradations (box, area).
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)

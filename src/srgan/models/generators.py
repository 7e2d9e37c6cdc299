"""Generator families. All share ``in_channels, out_channels, scale, n_channels, n_blocks``."""

from __future__ import annotations

import torch
from torch import nn

from srgan.models.blocks import RCAB, SUPPORTED_SCALES, PixelShuffleUpsampler, upsample_image

GLOBAL_RESIDUAL_MODES = ("bicubic", "bilinear", None)


class RCABGenerator(nn.Module):
    """RCAN-style generator: residual channel-attention blocks, long skip, pixel-shuffle upsampling.

    With ``global_residual`` set, the network predicts only the detail added to the interpolated
    input, and the last conv starts at zero so that the untrained network equals that
    interpolation. Without it, a freshly initialised net starts far below bicubic and needs many
    more steps to catch up (measured in DESIGN.md).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        n_channels: int = 64,
        n_blocks: int = 16,
        reduction: int = 16,
        res_scale: float = 1.0,
        global_residual: str | None = "bicubic",
    ) -> None:
        super().__init__()
        if scale not in SUPPORTED_SCALES:
            raise ValueError(f"scale must be one of {SUPPORTED_SCALES}, got {scale}")
        if global_residual not in GLOBAL_RESIDUAL_MODES:
            raise ValueError(f"global_residual must be one of {GLOBAL_RESIDUAL_MODES}, got {global_residual!r}")
        if global_residual is not None and in_channels != out_channels:
            raise ValueError("global_residual needs in_channels == out_channels")
        self.scale = scale
        self.global_residual = global_residual
        self.head = nn.Conv2d(in_channels, n_channels, 3, padding=1)
        self.body = nn.Sequential(
            *[RCAB(n_channels, reduction, res_scale) for _ in range(n_blocks)],
            nn.Conv2d(n_channels, n_channels, 3, padding=1),
        )
        self.upsample = PixelShuffleUpsampler(n_channels, scale)
        self.tail = nn.Conv2d(n_channels, out_channels, 3, padding=1)
        if global_residual is not None:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.head(lr)
        features = features + self.body(features)
        detail = self.tail(self.upsample(features))
        if self.global_residual is None:
            return detail
        return upsample_image(lr, self.scale, self.global_residual) + detail

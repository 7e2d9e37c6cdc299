"""Pixel-wise content losses."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class L1Loss(nn.Module):
    """Mean absolute error over all pixels and bands."""

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(sr, hr)

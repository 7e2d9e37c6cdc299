"""Pixel-wise content losses, means over all pixels and bands."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class L1Loss(nn.Module):
    """Mean absolute error."""

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(sr, hr)


class L2Loss(nn.Module):
    """Mean squared error."""

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(sr, hr)


class CharbonnierLoss(nn.Module):
    """``mean(sqrt((sr - hr)^2 + eps^2))``: L1 with a smooth minimum (Lai et al. 2017, LapSRN)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((sr - hr) ** 2 + self.eps**2).mean()

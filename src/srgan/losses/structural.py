"""Structural losses: 1 - SSIM and total variation."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure


class SSIMLoss(nn.Module):
    """``1 - SSIM`` (Gaussian window, torchmetrics), averaged over bands and images.

    ``data_range`` is the value range of the normalised data (1.0 for reflectance).
    """

    def __init__(self, data_range: float = 1.0, kernel_size: int = 11, sigma: float = 1.5) -> None:
        super().__init__()
        self.data_range = data_range
        self.kernel_size = kernel_size
        self.sigma = sigma

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        ssim = structural_similarity_index_measure(
            sr, hr, data_range=self.data_range, kernel_size=self.kernel_size, sigma=self.sigma
        )
        return 1.0 - ssim


class TVLoss(nn.Module):
    """Anisotropic total variation of the SR image: mean absolute difference of neighbours.

    It takes ``hr`` for a uniform signature but ignores it: it only penalises SR noise.
    """

    def forward(self, sr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        dy = (sr[..., 1:, :] - sr[..., :-1, :]).abs().mean()
        dx = (sr[..., :, 1:] - sr[..., :, :-1]).abs().mean()
        return dx + dy

"""Spectral losses: the angle between band vectors, and per-band mean consistency."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SAMLoss(nn.Module):
    """Mean spectral angle (radians) between the band vectors of SR and HR at every pixel.

    The angle between unit vectors u, v is computed as ``2 atan2(|u - v|, |u + v|)`` (Kahan's
    formula) rather than ``acos(u . v)``: it is exact near 0 and its gradient stays finite where
    the spectra coincide, where ``acos'`` is infinite. Brightness changes that keep the spectral
    shape cost nothing: that is what the other terms are for.
    """

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        if sr.shape[1] < 2:
            raise ValueError("SAM needs at least 2 bands")
        u = F.normalize(sr, dim=1, eps=1e-12)
        v = F.normalize(hr, dim=1, eps=1e-12)
        diff = torch.linalg.vector_norm(u - v, dim=1)
        total = torch.linalg.vector_norm(u + v, dim=1)
        return (2 * torch.atan2(diff, total)).mean()


class BandMeanLoss(nn.Module):
    """L1 between the per-image, per-band means of SR and HR: no drift of any band's level."""

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return (sr.mean(dim=(-2, -1)) - hr.mean(dim=(-2, -1))).abs().mean()

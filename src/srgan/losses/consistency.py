"""LR consistency: the SR image, degraded again, should be the LR image it came from.

A super-resolved image that is faithful to its input reproduces that input under the degradation
that made it (the "consistency" of Wald's protocol; the reflectance consistency of opensr-test
measures the same thing after the fact). As a loss term this keeps the network from inventing
detail or shifting band levels that the LR pixels contradict, whatever the other terms reward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from srgan.data.degradation import Resample

DISTANCES = ("l1", "sam")
OPERATORS = ("dataset", "box", "bicubic", "bilinear")


class LRConsistencyLoss(nn.Module):
    """Distance between ``degrade(SR)`` and LR on the LR grid.

    Args:
        distance: ``l1`` (mean absolute difference) or ``sam`` (mean spectral angle, radians: only the
            spectral shape must agree, not the level).
        operator: ``dataset``: the dataset's own degradation (its deterministic part: shift and noise
            are random and not repeated; with a degradation drawn per batch on the device, the very
            operator drawn for the batch); or a plain resampling ``box`` / ``bicubic`` / ``bilinear``
            (for paired data, which has no degradation model).

    :class:`srgan.losses.CompositeLoss` calls it with the batch's LR, the operator bound by
    :meth:`bind`, and which LR pixels are valid (their whole HR footprint holds data).
    """

    needs_lr = True

    def __init__(self, distance: str = "l1", operator: str = "dataset") -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"loss.terms.lr_consistency.distance must be one of {DISTANCES}, got {distance!r}")
        if operator not in OPERATORS:
            raise ValueError(f"loss.terms.lr_consistency.operator must be one of {OPERATORS}, got {operator!r}")
        self.distance, self.operator = distance, operator
        self._degrade: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.scale: int | None = None

    def bind(self, degradation: object | None, scale: int, dataset: str = "the dataset") -> None:
        """Fix the operator for a dataset: its degradation (``operator=dataset``) or a resampling by ``scale``."""
        self.scale = int(scale)
        if self.operator != "dataset":
            self._degrade = Resample(self.scale, self.operator).operator
            return
        if degradation is None or not hasattr(degradation, "operator"):
            raise ValueError(
                f"loss.weights.lr_consistency: {dataset} has no degradation model (its LR is real), so "
                "loss.terms.lr_consistency.operator=dataset has nothing to apply; choose box, bicubic or bilinear"
            )
        self._degrade = degradation.operator

    def forward(
        self,
        sr: torch.Tensor,
        lr: torch.Tensor,
        degrade: Callable[[torch.Tensor], torch.Tensor] | None = None,
        lr_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        operator = degrade if degrade is not None and self.operator == "dataset" else self._degrade
        if operator is None:
            raise RuntimeError("LRConsistencyLoss used before bind(): no degradation operator")
        again = operator(sr)
        if again.shape != lr.shape:
            raise ValueError(f"lr_consistency: the degraded SR is {tuple(again.shape)}, LR {tuple(lr.shape)}")
        if self.distance == "l1":
            per_pixel = (again - lr.float()).abs().mean(1)
        else:
            u, v = F.normalize(again, dim=1, eps=1e-12), F.normalize(lr.float(), dim=1, eps=1e-12)
            per_pixel = 2 * torch.atan2(torch.linalg.vector_norm(u - v, dim=1), torch.linalg.vector_norm(u + v, dim=1))
        if lr_valid is None:
            return per_pixel.mean()
        weight = lr_valid.to(per_pixel.dtype)
        return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)

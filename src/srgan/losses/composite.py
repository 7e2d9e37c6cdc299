"""The weighted sum of loss terms, built from config, with every term returned for logging."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from srgan.losses.adversarial import GANLoss

ADVERSARIAL = "adversarial"


class CompositeLoss(nn.Module):
    """Content terms (``terms``) and the adversarial term, each with a weight in ``weights``.

    Every weight must name a configured term (or ``adversarial``) and every term needs a weight,
    so a misspelt key fails here instead of being silently ignored. A term whose weight is 0 is
    not computed at all. The adversarial weight in ``weights`` is the target that the training
    schedule ramps up to.
    """

    def __init__(self, weights: Mapping[str, float], terms: Mapping[str, nn.Module], adversarial: GANLoss) -> None:
        super().__init__()
        weights = dict(weights)
        unknown = set(weights) - set(terms) - {ADVERSARIAL}
        if unknown:
            raise ValueError(
                f"loss.weights: unknown term(s) {sorted(unknown)}; configured terms: {sorted(terms) + [ADVERSARIAL]}"
            )
        missing = (set(terms) | {ADVERSARIAL}) - set(weights)
        if missing:
            raise ValueError(f"loss.weights: no weight for term(s) {sorted(missing)}")
        for name, w in weights.items():
            if w < 0:
                raise ValueError(f"loss.weights.{name} must be >= 0, got {w}")
        self.weights = weights
        self.terms = nn.ModuleDict(dict(terms))
        self.adversarial = adversarial

    @property
    def adversarial_weight(self) -> float:
        return float(self.weights[ADVERSARIAL])

    def content(self, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted content loss, computed in fp32, and each unweighted term (detached)."""
        sr, hr = sr.float(), hr.float()
        total = sr.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            if self.weights[name] == 0:
                continue
            value = term(sr, hr)
            parts[name] = value.detach()
            total = total + self.weights[name] * value
        return total, parts

"""The weighted sum of loss terms, built from config, with every term returned for logging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from srgan.losses.adversarial import GANLoss

ADVERSARIAL = "adversarial"


class CompositeLoss(nn.Module):
    """Content terms (``terms``) and the adversarial term, each with a weight in ``weights``.

    Every weight must name a configured term (or ``adversarial``) and every term needs a weight,
    so a misspelt key fails here instead of being silently ignored. A term whose weight is 0 is
    never computed and never built (no VGG is loaded for a perceptual weight of 0).

    ``terms`` and ``adversarial`` are modules, or configs (mappings with a ``_target_``) that are
    instantiated here, only for a weight other than 0. ``conf/loss/*.yaml`` set ``_recursive_: false``,
    so ``instantiate(cfg.loss)`` hands the term configs over unbuilt: it is the one way to build a loss.
    The adversarial weight is the target the training schedule ramps to.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        terms: Mapping[str, nn.Module | Mapping[str, Any] | None],
        adversarial: GANLoss | Mapping[str, Any],
    ) -> None:
        super().__init__()
        weights = {str(k): float(v) for k, v in _plain(weights).items()}
        terms = dict(_plain(terms))
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
        for name, term in terms.items():
            if term is None and weights[name] != 0:
                raise ValueError(f"loss.terms.{name} is not built but loss.weights.{name}={weights[name]}")
        self.weights = weights
        self.terms = nn.ModuleDict(
            {k: _built(v, f"loss.terms.{k}") for k, v in terms.items() if v is not None and weights[k] != 0}
        )
        self.adversarial = _built(_plain(adversarial), "loss.adversarial")

    @property
    def adversarial_weight(self) -> float:
        return float(self.weights[ADVERSARIAL])

    def content(self, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted content loss, computed in fp32 even under autocast, and each unweighted term (detached)."""
        with torch.autocast(sr.device.type, enabled=False):
            sr, hr = sr.float(), hr.float()
            total = sr.new_zeros(())
            parts: dict[str, torch.Tensor] = {}
            for name, term in self.terms.items():
                value = term(sr, hr)
                parts[name] = value.detach()
                total = total + self.weights[name] * value
        return total, parts


def _plain(value: Any) -> Any:
    """A DictConfig (what a non-recursive ``instantiate`` passes) as plain containers; else as is."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _built(term: Any, key: str) -> nn.Module:
    if isinstance(term, nn.Module):
        return term
    if isinstance(term, Mapping) and "_target_" in term:
        return instantiate(term, _convert_="all")
    raise TypeError(f"{key} must be a loss module or a config with a _target_, got {type(term).__name__}")

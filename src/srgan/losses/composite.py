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
        mask_nodata: bool = True,
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
        self.mask_nodata = bool(mask_nodata)
        self._lr_scale: int | None = None  # set by bind() when a term compares on the LR grid

    def bind(self, degradation: Any, scale: int, dataset: str = "the dataset") -> None:
        """Give the terms that degrade SR again (``lr_consistency``) the dataset's degradation."""
        for term in self.terms.values():
            if getattr(term, "needs_lr", False):
                term.bind(degradation, scale, dataset)
                self._lr_scale = scale  # the LR footprint of the nodata mask (_valid_share)

    @property
    def adversarial_weight(self) -> float:
        return float(self.weights[ADVERSARIAL])

    def masked(self, sr: torch.Tensor, hr: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """SR with HR in its nodata pixels (``valid``: ``(batch, H, W)``, true where HR holds data):
        there every term sees no error and passes no gradient, and D sees the same fill in real and
        fake (HR's nodata is zero-filled). SR itself without a mask, with ``mask_nodata`` off, or
        when every pixel is valid."""
        if valid is None or not self.mask_nodata or bool(valid.all()):
            return sr
        return torch.where(valid[:, None].to(sr.device), sr, hr.to(sr.dtype))

    def content(
        self,
        sr: torch.Tensor,
        hr: torch.Tensor,
        lr: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        degrade: Any = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted content loss, computed in fp32 even under autocast, and each unweighted term (detached).

        With ``valid`` (HR's data pixels) and ``mask_nodata``, nodata pixels are left out: SR is
        :meth:`masked` there, and each term is divided by the share of valid pixels, so a per-pixel
        term is its mean over the valid pixels alone. ``lr`` (and ``degrade``, a batch's own drawn
        degradation) feed the LR-consistency term, on the LR pixels whose HR footprint is all valid.
        """
        with torch.autocast(sr.device.type, enabled=False):
            sr, hr = self.masked(sr.float(), hr.float(), valid), hr.float()
            share, lr_valid = self._valid_share(valid, sr)
            total = sr.new_zeros(())
            parts: dict[str, torch.Tensor] = {}
            for name, term in self.terms.items():
                if getattr(term, "needs_lr", False):
                    if lr is None:
                        raise ValueError(f"loss.terms.{name} needs the batch's LR")
                    value = term(sr, lr, degrade, lr_valid)
                else:
                    value = term(sr, hr) / share
                parts[name] = value.detach()
                total = total + self.weights[name] * value
        return total, parts

    def _valid_share(self, valid: torch.Tensor | None, sr: torch.Tensor) -> tuple[torch.Tensor | float, Any]:
        if valid is None or not self.mask_nodata or bool(valid.all()):
            return 1.0, None
        scale = self._lr_scale
        weight = valid.to(sr.device, sr.dtype)
        lr_valid = None
        if scale:
            lr_valid = torch.nn.functional.avg_pool2d(weight[:, None], scale)[:, 0] > 1 - 1e-6
        return weight.mean().clamp_min(1.0 / weight.numel()), lr_valid


def _plain(value: Any) -> Any:
    """A DictConfig (what a non-recursive ``instantiate`` passes) as plain containers; else as is."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _built(term: Any, key: str) -> nn.Module:
    if isinstance(term, nn.Module):
        return term
    if isinstance(term, Mapping) and "_target_" in term:
        return instantiate(term, _convert_="all")
    raise TypeError(f"{key} must be a loss module or a config with a _target_, got {type(term).__name__}")

"""Geometric self-ensemble at test time (``tta=d4``): the mean over the eight symmetries of a square.

The dihedral group D4 holds the four rotations by multiples of 90 degrees, each with and without a
left-right flip. Transform ``i`` (0..7) flips the last axis when ``i >= 4``, then rotates by
``i % 4`` quarter turns in the (H, W) plane; its inverse undoes both in the reverse order. The
self-ensemble of a generator G is ``mean_i inverse_i(G(transform_i(x)))``: a G that commutes with
every transform (nearest upsampling, a pointwise mix) gives its plain output back; any other G
gets the average of eight different predictions ("x8" TTA in the SR literature), at eight passes'
cost.

Rotating by a quarter turn swaps H and W: a non-square batch becomes a (W, H) batch for those four
transforms, and the inverse rotation of the (W*s, H*s) output restores (H*s, W*s). Each transform
is one pass over the whole batch (never a concatenation of differently shaped rotations); outputs
are accumulated in fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from srgan.config import ConfigError

TTA_MODES = ("none", "d4")
D4_SIZE = 8


def check_tta(value: object, key: str = "tta") -> str:
    """``value`` when it is one of :data:`TTA_MODES`; otherwise a config error naming ``key``."""
    if value not in TTA_MODES:
        raise ConfigError(
            f"{key} must be none (one pass) or d4 (the mean over the 8 flips and quarter turns), got {value!r}"
        )
    return str(value)


def d4_transform(x: torch.Tensor, index: int) -> torch.Tensor:
    """Transform ``index`` (0..7) of D4 on the last two axes: flip W if ``index >= 4``, then
    ``index % 4`` quarter turns. The result keeps ``x``'s memory format (channels-last stays so)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        fmt = torch.channels_last
    else:
        fmt = torch.contiguous_format
    if index >= 4:
        x = x.flip(-1)
    return torch.rot90(x, index % 4, (-2, -1)).contiguous(memory_format=fmt)


def d4_inverse(y: torch.Tensor, index: int) -> torch.Tensor:
    """The inverse of :func:`d4_transform` ``index``: ``d4_inverse(d4_transform(x, i), i) == x``."""
    y = torch.rot90(y, -(index % 4), (-2, -1))
    return y.flip(-1) if index >= 4 else y


def d4_pass(model: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
    """``inverse_index(model(transform_index(x)))``, in fp32."""
    return d4_inverse(model(d4_transform(x, index)).float(), index)


def d4_mean(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The mean over the eight transforms of ``model``'s back-transformed output, in fp32."""
    total = d4_pass(model, x, 0)
    for index in range(1, D4_SIZE):
        total += d4_pass(model, x, index)
    return total / D4_SIZE


class D4Pass(nn.Module):
    """``model`` seen through transform ``index``: one sample of :class:`D4Ensemble` (the members of
    ``uncertainty=tta``'s sampler)."""

    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        if not 0 <= index < D4_SIZE:
            raise ValueError(f"a D4 transform index is in 0..7, got {index}")
        self.model, self.index = model, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return d4_pass(self.model, x, self.index)


class D4Ensemble(nn.Module):
    """``model``'s geometric self-ensemble: :func:`d4_mean` as a module (``tta=d4``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return d4_mean(self.model, x)


def self_ensemble(model: nn.Module, tta: str) -> nn.Module:
    """``model`` itself for ``tta=none``, its :class:`D4Ensemble` for ``tta=d4``."""
    return D4Ensemble(model) if check_tta(tta) == "d4" else model

"""Tiled inference equals whole-image inference: exactly for pointwise models, closely for convolutions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from srgan.models import RCABGenerator
from srgan.tiling import blend_window, tiled_super_resolve


class PointwiseSR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.mix(x), scale_factor=2, mode="nearest")


def test_pointwise_model_is_reproduced_exactly():
    model = PointwiseSR().eval()
    lr = torch.rand(3, 37, 53)
    tiled = tiled_super_resolve(model, lr, 2, tile=16, overlap=4, batch_size=3)
    with torch.no_grad():
        whole = model(lr[None])[0]
    torch.testing.assert_close(tiled, whole)


def test_conv_model_has_no_seams():
    torch.manual_seed(0)
    model = RCABGenerator(4, 4, 4, n_channels=8, n_blocks=2, reduction=4).eval()
    with torch.no_grad():
        nn.init.normal_(model.tail.weight, std=0.05)
        lr = torch.rand(4, 40, 40)
        whole = model(lr[None])[0]
    tiled = tiled_super_resolve(model, lr, 4, tile=24, overlap=8)
    no_overlap = tiled_super_resolve(model, lr, 4, tile=20, overlap=0)
    err_blend = (tiled - whole).abs().max()
    err_cut = (no_overlap - whole).abs().max()
    assert err_blend < 0.25 * err_cut  # blending removes most of the tile-edge error
    assert tiled.shape == (4, 160, 160)


def test_image_smaller_than_tile_and_bad_overlap():
    model = PointwiseSR().eval()
    assert tiled_super_resolve(model, torch.rand(3, 5, 7), 2, tile=64, overlap=8).shape == (3, 10, 14)
    with pytest.raises(ValueError, match="overlap"):
        tiled_super_resolve(model, torch.rand(3, 5, 7), 2, tile=8, overlap=8)


def test_blend_window_is_positive_and_flat_inside():
    w = blend_window(32, 32, 8)
    assert (w > 0).all() and w[8:24, 8:24].eq(1).all()

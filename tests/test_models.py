"""Shapes at every scale and band count; the global residual makes step 0 equal to bicubic."""

from __future__ import annotations

import pytest
import torch

from srgan.models import RCABGenerator, SRGANDiscriminator
from srgan.models.blocks import PixelShuffleUpsampler, upsample_image


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("bands", [1, 3, 4, 6])
def test_generator_shapes_and_identity_at_init(scale, bands):
    g = RCABGenerator(bands, bands, scale, n_channels=8, n_blocks=1, reduction=4)
    lr = torch.rand(2, bands, 10, 12)
    sr = g(lr)
    assert sr.shape == (2, bands, 10 * scale, 12 * scale)
    torch.testing.assert_close(sr, upsample_image(lr, scale, "bicubic"))


def test_generator_without_global_residual_is_not_bicubic():
    g = RCABGenerator(4, 4, 4, n_channels=8, n_blocks=1, reduction=4, global_residual=None)
    lr = torch.rand(1, 4, 8, 8)
    assert not torch.allclose(g(lr), upsample_image(lr, 4, "bicubic"))


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        RCABGenerator(4, 4, 5)
    with pytest.raises(ValueError, match="global_residual"):
        RCABGenerator(4, 4, 4, global_residual="lanczos")


def test_icnr_upsampler_starts_as_nearest_neighbour():
    up = PixelShuffleUpsampler(4, 2)
    x = torch.rand(1, 4, 5, 5)
    y = up(x)
    # Every 2x2 output cell holds one value: no checkerboard at initialisation.
    cells = y.unfold(2, 2, 2).unfold(3, 2, 2)
    assert torch.allclose(cells, cells[..., :1, :1].expand_as(cells))


@pytest.mark.parametrize("size", [32, 48, 96, 128])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_discriminator_accepts_any_patch_size(size, spectral_norm):
    d = SRGANDiscriminator(6, base_channels=8, n_stages=3, head_features=16, spectral_norm=spectral_norm)
    assert d(torch.rand(3, 6, size, size)).shape == (3, 1)


def test_discriminator_head_does_not_grow_with_patch_size():
    d = SRGANDiscriminator(4)
    # The reference's dense head over a flattened 128 px input has 18.9 M parameters on its own;
    # after adaptive pooling ours is Linear(512, 1024) + Linear(1024, 1).
    assert sum(p.numel() for p in d.head.parameters()) == 512 * 1024 + 1024 + 1024 + 1

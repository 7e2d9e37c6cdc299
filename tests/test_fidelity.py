"""The opensr-test style measures and ERGAS on cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from srgan.data.degradation import Resample
from srgan.evaluation.fidelity import consistency, correctness, ergas, phase_correlation_shift, synthesis
from srgan.models.blocks import upsample_image


def scene(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = 0.2 + 0.1 * torch.rand(3, 64, 64, generator=g)
    hr = torch.nn.functional.avg_pool2d(hr[None], 3, 1, 1, count_include_pad=False)[0]  # some spatial structure
    return hr, Resample(4)(hr)


def test_correctness_classifies_the_three_cases():
    hr, lr = scene()
    up = upsample_image(lr[None], 4, "bicubic")[0]
    assert correctness(hr, lr, hr, 4, min_reference=0.0)["improvement_share"] == 1.0  # SR = HR
    assert correctness(up, lr, hr, 4, min_reference=0.0)["omission_share"] == 1.0  # SR = bicubic: nothing added
    g = torch.Generator().manual_seed(5)
    invented = up + 0.2 * (torch.rand(up.shape, generator=g) - 0.5)  # detail that is in neither
    shares = correctness(invented, lr, hr, 4, min_reference=0.0)
    assert shares["hallucination_share"] > 0.9
    assert math.isclose(shares["improvement_share"] + shares["omission_share"] + shares["hallucination_share"], 1.0)


def test_detail_added_where_hr_has_none_counts_as_hallucination():
    """Where HR equals bicubic(LR) there is nothing to improve, and any detail SR adds there is
    invented: those pixels must be counted (as opensr-test's mask does: any of the three distances
    above the threshold), not dropped because HR is close to bicubic."""
    g = torch.Generator().manual_seed(6)
    lr = 0.2 + 0.1 * torch.rand(3, 16, 16, generator=g)
    up = upsample_image(lr[None], 4, "bicubic")[0]
    sign = torch.randint(0, 2, up.shape, generator=g) * 2 - 1
    detail = sign * (0.01 + 0.02 * torch.rand(up.shape, generator=g))  # every pixel moves by >= 0.01
    hr = up.clone()
    hr[..., 32:] += detail[..., 32:]  # right half: real detail, which SR reproduces
    sr = up + detail  # left half: the same kind of detail, invented
    shares = correctness(sr, lr, hr, 4)
    assert shares["correctness_pixels"] == 64 * 64
    assert shares["hallucination_share"] == pytest.approx(0.5, abs=0.02)
    assert shares["improvement_share"] == pytest.approx(0.5, abs=0.02)
    # Pixels where no image differs from another by the threshold are the ones left out.
    assert correctness(up, lr, up, 4)["correctness_pixels"] == 0


def test_consistency_of_a_perfect_and_of_a_shifted_sr():
    hr, lr = scene(1)
    perfect = consistency(hr, lr, Resample(4))
    assert perfect["consistency_reflectance_l1"] < 1e-7 and perfect["consistency_spectral_sam_deg"] < 1e-2
    assert perfect["consistency_spatial_shift_px"] < 0.05
    shifted = consistency(torch.roll(hr, shifts=8, dims=-1), lr, Resample(4))  # 8 HR px = 2 LR px
    assert shifted["consistency_spatial_shift_px"] == pytest.approx(2.0, abs=0.1)


def test_phase_correlation_recovers_a_known_shift():
    a = torch.rand(2, 48, 48, generator=torch.Generator().manual_seed(2))
    dy, dx = phase_correlation_shift(a, torch.roll(a, shifts=(3, -5), dims=(-2, -1)))
    assert (round(dy), round(dx)) == (-3, 5)


def test_synthesis_is_zero_for_bicubic_and_one_for_hr():
    hr, lr = scene(3)
    up = upsample_image(lr[None], 4, "bicubic")[0]
    assert synthesis(up, lr, hr, 4)["synthesis_l1"] == 0.0
    assert synthesis(hr, lr, hr, 4)["synthesis_ratio"] == pytest.approx(1.0)


def test_ergas_matches_its_definition():
    target = torch.full((2, 8, 8), 0.5)
    total, per_band = ergas(target + 0.05, target, 4)
    assert total == pytest.approx(100 / 4 * 0.1) and per_band == pytest.approx([2.5, 2.5])
    assert ergas(target, target, 4)[0] == 0.0


def test_histogram_matching_gives_the_reference_distribution_and_keeps_order():
    from srgan.evaluation.fidelity import match_histograms

    g = torch.Generator().manual_seed(4)
    source = torch.rand(2, 40, 40, generator=g) ** 2
    reference = 0.3 + 0.1 * torch.randn(2, 10, 10, generator=g)
    matched = match_histograms(source, reference)
    for b in range(2):
        q = torch.tensor([0.1, 0.5, 0.9])
        torch.testing.assert_close(matched[b].quantile(q), reference[b].quantile(q), atol=0.01, rtol=0)
    # monotone: the order of the pixels is kept
    order = source[0].flatten().argsort()
    assert (matched[0].flatten()[order].diff() >= -1e-6).all()

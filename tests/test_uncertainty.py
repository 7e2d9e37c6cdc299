"""Uncertainty sampling and calibration maths, and the downstream index / thematic-map measures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from srgan.evaluation.downstream import (
    ThematicAgreement,
    available_indices,
    index_errors,
    kmeans,
    normalized_difference,
)
from srgan.evaluation.uncertainty import Calibration, SampleSpread, interval_scale, noise_sampler, z_for
from srgan.models.generators import RCABGenerator, StochasticGenerator


def gaussian_case(sigma_pred: float, n: int = 400_000, seed: int = 0):
    """Truth drawn from N(mean, 1) around a random mean; the prediction claims std ``sigma_pred``."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(n, generator=g)
    target = mean + torch.randn(n, generator=g)
    return mean, torch.full_like(mean, sigma_pred), target


def test_z_of_the_usual_levels():
    assert z_for(0.6827) == pytest.approx(1.0, abs=1e-3)
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-5)
    with pytest.raises(ValueError):
        z_for(1.0)


def test_calibrated_gaussian_covers_the_nominal_shares():
    cal = Calibration()
    cal.update(*gaussian_case(1.0))
    out = cal.compute()
    assert out["coverage_68"] == pytest.approx(0.6827, abs=0.003)
    assert out["coverage_95"] == pytest.approx(0.95, abs=0.002)
    assert out["spread_rmse_ratio"] == pytest.approx(1.0, abs=0.01)
    assert out["calibration_error"] < 0.005
    for nominal, observed in cal.reliability():
        assert observed == pytest.approx(nominal, abs=0.004)


def test_overconfident_and_underconfident_spreads_are_seen():
    over, under = Calibration(), Calibration()
    over.update(*gaussian_case(0.5))  # claims half the true spread
    under.update(*gaussian_case(2.0))
    o, u = over.compute(), under.compute()
    # P(|Z| <= 0.5) = 0.3829, P(|Z| <= 1.96 / 2) = 0.6729; P(|Z| <= 2) = 0.9545, P(|Z| <= 3.92) = 0.99991
    assert o["coverage_68"] == pytest.approx(0.3829, abs=0.003)
    assert o["coverage_95"] == pytest.approx(0.6729, abs=0.003)
    assert u["coverage_68"] == pytest.approx(0.9545, abs=0.002)
    assert u["coverage_95"] == pytest.approx(0.99991, abs=0.0005)
    assert o["spread_rmse_ratio"] == pytest.approx(0.5, abs=0.01)
    assert u["spread_rmse_ratio"] == pytest.approx(2.0, abs=0.02)


def test_interval_scale_recovers_the_missing_factor():
    mean, std, target = gaussian_case(0.25)  # claims a quarter of the true spread
    err = (target - mean).abs()
    assert interval_scale(err, std) == pytest.approx(4.0, rel=0.01)
    assert interval_scale(err, std, level=0.95) == pytest.approx(4.0, rel=0.01)
    cal = Calibration()
    cal.update(mean, std * interval_scale(err, std), target)
    assert cal.compute()["coverage_68"] == pytest.approx(0.6827, abs=0.002)
    # Heavy tails (Laplace errors): matching the 68 % level is not matching the RMS.
    g = torch.Generator().manual_seed(2)
    u = torch.rand(400_000, generator=g) - 0.5
    laplace = -torch.sign(u) * torch.log1p(-2 * u.abs())
    factor = interval_scale(laplace.abs(), torch.ones_like(laplace))
    assert factor == pytest.approx(-math.log(1 - 0.6827), rel=0.02)  # P(|L| <= t) = 1 - exp(-t)
    with pytest.raises(ValueError, match="no pixel"):
        interval_scale(torch.zeros(3), torch.zeros(3))


def test_spread_error_correlation_follows_heteroscedastic_noise():
    g = torch.Generator().manual_seed(1)
    n = 200_000
    sigma = 0.1 + torch.rand(n, generator=g)  # each pixel its own true spread
    mean = torch.rand(n, generator=g)
    target = mean + sigma * torch.randn(n, generator=g)
    informed, blind = Calibration(), Calibration()
    informed.update(mean, sigma, target)
    blind.update(mean, sigma[torch.randperm(n, generator=g)], target)
    # |err| = sigma |Z|: corr(sigma, sigma|Z|) = E|Z| sd(sigma) / sd(sigma |Z|), with E|Z| = sqrt(2/pi).
    var_s, mean_s, e_abs_z = 1 / 12, 0.6, math.sqrt(2 / math.pi)  # sigma ~ U(0.1, 1.1)
    var_err = (var_s + mean_s**2) - (e_abs_z * mean_s) ** 2
    expected = e_abs_z * var_s / math.sqrt(var_s * var_err)
    assert informed.compute()["spread_error_corr"] == pytest.approx(expected, abs=0.01)
    assert abs(blind.compute()["spread_error_corr"]) < 0.01
    # Accumulating in two halves gives the same numbers as one update.
    halves = Calibration()
    halves.update(mean[: n // 2], sigma[: n // 2], target[: n // 2])
    halves.update(mean[n // 2 :], sigma[n // 2 :], target[n // 2 :])
    for key, value in informed.compute().items():
        assert halves.compute()[key] == pytest.approx(value, rel=1e-9)


def test_calibration_rejects_mismatched_shapes_and_empty_input():
    cal = Calibration()
    with pytest.raises(ValueError, match="shapes differ"):
        cal.update(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="no finite values"):
        cal.compute()


class _Shift(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x):
        return x + self.value


def test_sample_spread_is_the_sample_mean_and_std():
    values = [0.0, 0.1, 0.5, 2.0]
    spread = SampleSpread([_Shift(v) for v in values])
    x = torch.full((1, 2, 3, 3), 1000.0)  # far from zero: a naive sum of squares would lose the spread
    out = spread(x)
    assert out.shape == (1, 4, 3, 3)
    torch.testing.assert_close(out[:, :2], torch.full((1, 2, 3, 3), 1000.0 + sum(values) / 4))
    std = torch.tensor(values).std().item()
    torch.testing.assert_close(out[:, 2:], torch.full((1, 2, 3, 3), std), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="at least 2 members"):
        SampleSpread([_Shift(0.0)])


def test_noise_sampling_needs_a_trained_stochastic_generator():
    with pytest.raises(ValueError, match="generator=stochastic"):
        noise_sampler(RCABGenerator(3, 3, 2, n_channels=8, n_blocks=1, reduction=4), 4)
    g = StochasticGenerator(3, 3, 2, n_channels=8, n_blocks=2).eval()
    with pytest.raises(ValueError, match="noise strength"):
        noise_sampler(g, 4)  # untrained: zero strength, every sample the same
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: noise on, and a tail that is not zero-initialised any more
        for name, p in g.named_parameters():
            p.fill_(0.5) if name.endswith("strength") else p.add_(0.05 * torch.randn_like(p))
    sampler = noise_sampler(g, 6, seed=3)
    x = torch.rand(2, 3, 8, 8)
    a, b = sampler(x), sampler(x)
    torch.testing.assert_close(a, b)  # seeded: the same samples every call (every tile of a scene)
    assert float(a[:, 3:].mean()) > 0
    # The mean is the mean of the six seeded draws.
    draws = []
    for seed in range(3, 9):
        g.set_noise("fixed", seed)
        draws.append(g(x))
    torch.testing.assert_close(a[:, :3], torch.stack(draws).mean(0), rtol=1e-5, atol=1e-6)


# -- downstream measures -------------------------------------------------------------------------


def test_indices_found_by_band_name():
    assert set(available_indices(["B04", "B03", "B02", "B08"])) == {"ndvi", "ndwi"}
    assert set(available_indices(["R", "G", "B", "NIR"])) == {"ndvi", "ndwi"}
    assert set(available_indices(["B11", "B12"])) == {"nbr2"}
    assert set(available_indices(["B05", "B06", "B07", "B8A", "B11", "B12"])) == {"nbr2", "ndmi"}
    assert available_indices(["B02"]) == {}


def test_index_values_and_errors():
    image = torch.zeros(4, 2, 2)
    image[0], image[3] = 0.1, 0.5  # red, NIR
    image[1] = 0.2  # green
    ndvi = normalized_difference(image, 3, 0)
    torch.testing.assert_close(ndvi, torch.full((2, 2), 0.4 / 0.6))
    assert torch.isnan(normalized_difference(torch.zeros(2, 1, 1), 0, 1)).all()  # no signal: undefined
    # A slightly negative value (SR overshoot on a dark pixel) is 0, as in the unsigned output file.
    assert float(normalized_difference(torch.tensor([[[0.02]], [[-0.019]]]), 0, 1)) == 1.0
    shifted = image.clone()
    shifted[3] = 0.3
    errors = index_errors(shifted, image, ["B04", "B03", "B02", "B08"])
    assert errors["ndvi_mae"] == pytest.approx(0.4 / 0.6 - 0.2 / 0.4, abs=1e-6)
    assert errors["ndwi_rmse"] == pytest.approx(abs(-0.1 / 0.5 - (-0.3 / 0.7)), abs=1e-6)
    assert index_errors(image, image, ["B04", "B03", "B02", "B08"])["ndvi_mae"] == 0.0


def test_kmeans_finds_separated_clusters_and_agreement_counts_changed_pixels():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.05, 0.05, 0.05, 0.3], [0.2, 0.2, 0.2, 0.25], [0.02, 0.08, 0.05, 0.01]])
    labels = torch.randint(3, (32, 32), generator=g)
    hr = centres[labels].permute(2, 0, 1) + 0.002 * torch.randn(4, 32, 32, generator=g)
    found = kmeans(hr.flatten(1).T, 3)
    assert torch.cdist(found, centres).min(1).values.max() < 0.01
    agreement = ThematicAgreement(hr, ["B04", "B03", "B02", "B08"], k=3)
    same = agreement.compare(hr)
    assert same["kmeans3_agreement"] == 1.0 and same["water_agreement"] == 1.0 and same["water_iou"] == 1.0
    changed = hr.clone()
    changed[:, :8] = centres[1][:, None, None]  # a quarter of the rows made bare soil
    moved = agreement.compare(changed)
    expected = 1 - float((labels[:8] != 1).float().sum()) / labels.numel()
    assert moved["kmeans3_agreement"] == pytest.approx(expected)
    water = labels == 2  # the third class is water (green > NIR)
    assert moved["water_iou"] == pytest.approx(float((water[8:]).sum()) / float(water.sum()))

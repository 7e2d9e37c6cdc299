"""Metric values on inputs whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from srgan.evaluation.metrics import SRMetrics
from srgan.evaluation.report import format_table


def test_identical_images_give_infinite_psnr_unit_ssim_zero_angle():
    x = torch.rand(2, 4, 40, 40) * 0.3 + 0.01
    m = SRMetrics(["a", "b", "c", "d"])
    m.update(x, x.clone())
    out = m.compute()
    assert math.isinf(out["psnr"]) and math.isinf(out["psnr_a"])
    assert out["ssim"] == pytest.approx(1.0)
    assert out["sam_deg"] == pytest.approx(0.0, abs=0.02)


def test_psnr_of_a_known_error_is_pooled_over_bands():
    target = torch.full((1, 2, 20, 20), 0.5)
    pred = target.clone()
    pred[:, 0] += 0.01  # band a: MSE 1e-4 -> 40 dB; band b exact; pooled MSE 5e-5 -> 43.01 dB
    m = SRMetrics(["a", "b"], border=0)
    m.update(pred, target)
    out = m.compute()
    assert out["psnr_a"] == pytest.approx(40.0, abs=1e-3)
    assert math.isinf(out["psnr_b"])
    assert out["psnr"] == pytest.approx(10 * math.log10(1 / 5e-5), abs=1e-3)


def test_spectral_angle_ignores_brightness_and_sees_direction():
    target = torch.rand(1, 3, 16, 16) + 0.1
    m = SRMetrics(["a", "b", "c"], border=0)
    m.update(target * 2, target)  # same spectral direction
    assert m.compute()["sam_deg"] == pytest.approx(0.0, abs=0.05)
    e1 = torch.zeros(1, 3, 8, 8)
    e1[:, 0] = 1
    e2 = torch.zeros(1, 3, 8, 8)
    e2[:, 1] = 1
    m.reset()
    m.update(e1, e2)  # orthogonal spectra
    assert m.compute()["sam_deg"] == pytest.approx(90.0, abs=0.01)


def test_border_is_ignored():
    target = torch.zeros(1, 1, 20, 20)
    pred = target.clone()
    pred[..., :4, :] = 1.0
    m = SRMetrics(["a"], border=4)
    m.update(pred, target)
    assert math.isinf(m.compute()["psnr"])


def test_mismatched_shapes_or_bands_are_errors():
    m = SRMetrics(["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="2 bands"):
        m.update(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_table_shows_gain_over_bicubic():
    table = format_table({"sr": {"psnr": 38.25}, "bicubic": {"psnr": 37.5}, "nearest": {"psnr": 36.0}})
    row = next(line for line in table.splitlines() if line.startswith("psnr"))
    assert row.split() == ["psnr", "38.25", "37.5", "36", "+0.75"] and "SR-bicubic" in table

"""Random degradations drawn on the device, the LR-consistency loss and the nodata-masked loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from torch.nn import functional as F
from torch.utils.data import DataLoader

from srgan.data.degradation import Degradation, RandomDegradation
from srgan.engine import steps
from srgan.engine.loop import TrainState, _Batches
from srgan.losses import CompositeLoss, GANLoss, L1Loss, LRConsistencyLoss, SAMLoss
from srgan.train import train
from tests.conftest import compose_config

NAMES = ["B04", "B03", "B02", "B08"]


def _context(d: RandomDegradation, batch: int = 3, patch: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = patch + 2 * d.margin
    return {
        "hr_context": torch.rand(batch, 4, size, size, generator=g),
        "valid_context": torch.ones(batch, size, size, dtype=torch.bool),
    }


def _draw(d: RandomDegradation, batch: int = 2, seed: int = 0):
    return d.draw(batch, 4, torch.Generator().manual_seed(seed), torch.device("cpu"))


def test_drawn_parameters_stay_in_their_ranges_and_keep_the_psf_area():
    d = RandomDegradation(
        4, band_names=NAMES, psf_width=[0.5, 2.0], anisotropy=[1.0, 3.0], snr=[20, 200], max_shift=0.3
    )
    drawn = _draw(d, batch=2000)
    nominal = torch.tensor(d.sigmas)
    width = (drawn.major * drawn.minor).sqrt() / nominal
    ratio = drawn.major / drawn.minor
    assert 0.5 <= width.min() and width.max() <= 2.0 and width.std() > 0.2
    assert torch.allclose(width, width[:, :1].expand_as(width))  # one width factor per image
    assert 1.0 - 1e-5 <= ratio.min() and ratio.max() <= 3.0 + 1e-5
    assert drawn.shift.abs().max() <= 0.3 and drawn.shift.std() > 0.1
    assert 20 <= drawn.snr.min() and drawn.snr.max() <= 200
    # log-uniform: the median is the geometric mean of the bounds
    assert float(drawn.snr.median()) == pytest.approx(math.sqrt(20 * 200), rel=0.1)
    assert 0 <= drawn.angle.min() and drawn.angle.max() <= math.pi


def test_a_constant_image_stays_constant_and_kernels_sum_to_one():
    d = RandomDegradation(4, band_names=NAMES, snr=None, orders=["blur_resize", "resize_blur"])
    batch = _context(d)
    batch["hr_context"] = torch.full_like(batch["hr_context"], 0.3)
    lr = d.degrade_batch(batch, seed=1)["lr"]
    assert lr.shape == (3, 4, 8, 8)
    torch.testing.assert_close(lr, torch.full_like(lr, 0.3))
    torch.testing.assert_close(_draw(d).kernels().sum(dim=(-2, -1)), torch.ones(8))


def test_the_nominal_draw_is_the_fixed_s2_psf_degradation():
    d = RandomDegradation(4, band_names=NAMES, psf_width=1.0, anisotropy=1.0, snr=None, max_shift=0.0)
    x = torch.rand(2, 4, 96, 96)
    fixed = Degradation(4, psf="s2_mtf", band_names=NAMES)
    torch.testing.assert_close(_draw(d)(x), fixed.operator(x), atol=1e-5, rtol=0)
    # and the held-out areas use exactly that nominal operator
    torch.testing.assert_close(d(x[0]), fixed(x[0]))


def test_the_drawn_shift_moves_lr_like_the_fixed_misregistration():
    d = RandomDegradation(4, band_names=NAMES, psf_width=1.0, anisotropy=1.0, snr=None, max_shift=0.5)
    drawn = _draw(d, batch=1, seed=5)
    dy, dx = drawn.shift[0].tolist()
    assert abs(dy) > 0.05 and abs(dx) > 0.05
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    smooth = torch.sin(xx / 9 + yy / 13)[None, None].expand(1, 4, 128, 128)
    moved = Degradation(4, psf="s2_mtf", band_names=NAMES, shift=[dy, dx])
    expected = moved._linear(smooth.float(), (dy, dx))
    assert (drawn(smooth) - expected)[..., 3:-3, 3:-3].abs().max() < 4e-3  # bilinear vs exact shift
    unshifted = Degradation(4, psf="s2_mtf", band_names=NAMES).operator(smooth)
    assert (unshifted - expected)[..., 3:-3, 3:-3].abs().max() > 0.05


def test_the_strided_box_path_equals_blur_then_block_means():
    d = RandomDegradation(4, band_names=NAMES)
    drawn = _draw(d, batch=3, seed=2)
    x = torch.rand(3, 4, 64, 64)
    torch.testing.assert_close(drawn(x), F.avg_pool2d(drawn._blur(x, 1.0), 4), atol=1e-5, rtol=0)


def test_draws_are_seeded_and_nodata_does_not_leak_into_lr():
    d = RandomDegradation(4, band_names=NAMES)
    batch = _context(d)
    first, again, other = (d.degrade_batch(dict(batch), s)["lr"] for s in (7, 7, 8))
    assert torch.equal(first, again) and not torch.equal(first, other)

    holed = dict(batch)
    valid = batch["valid_context"].clone()
    valid[:, :, : d.margin + 12] = False
    holed["valid_context"] = valid
    clean = d.degrade_batch({**holed, "hr_context": torch.where(valid[:, None], batch["hr_context"], 0.0)}, 3)["lr"]
    junk = d.degrade_batch({**holed, "hr_context": torch.where(valid[:, None], batch["hr_context"], 1e6)}, 3)["lr"]
    torch.testing.assert_close(clean, junk)
    assert clean.abs().max() < 10


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"psf": None}, "psf"),
        ({"psf_width": [2.0, 1.0]}, "psf_width"),
        ({"anisotropy": [0.5, 2.0]}, "anisotropy"),
        ({"snr": [0.0, 10.0]}, "snr"),
        ({"orders": ["sideways"]}, "orders"),
        ({"max_shift": -1.0}, "max_shift"),
    ],
)
def test_bad_random_degradation_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"dataset.degradation.{key}"):
        RandomDegradation(4, band_names=NAMES, **kwargs)


def test_a_resumed_loop_draws_the_same_degradations():
    d = RandomDegradation(4, band_names=NAMES)
    items = [{k: v[0] for k, v in _context(d, batch=1, seed=i).items()} for i in range(8)]
    loader = DataLoader(items, batch_size=2)
    accelerator = Accelerator(cpu=True)
    whole = _Batches(accelerator, loader, TrainState(), False, d)
    lrs = [whole.next()["lr"] for _ in range(4)]
    state = TrainState()
    state.batches = 2
    resumed = _Batches(accelerator, loader, state, False, d)
    assert torch.equal(resumed.next()["lr"], lrs[2]) and torch.equal(resumed.next()["lr"], lrs[3])
    assert not torch.equal(lrs[0], lrs[1])


def test_random_degradation_trains_end_to_end_with_lr_consistency(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["dataset/degradation=random", "loss.weights.lr_consistency=0.5"]
    cfg = compose_config("train", overrides)
    data = instantiate(cfg.dataset, _convert_="all")
    item = data.train_dataset(4, seed=0)[0]
    m, p = data.degradation.margin, data.patch_size
    assert set(item) == {"hr", "hr_valid", "hr_context", "valid_context"}
    assert item["hr_context"].shape[-1] == p + 2 * m
    torch.testing.assert_close(item["hr"], item["hr_context"][:, m : m + p, m : m + p])
    result = train(cfg, tmp_path / "run")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert "train/lr_consistency" in run.data.metrics and run.data.metrics["train/lr_consistency"] > 0
    assert run.data.params["dataset.degradation._target_"].endswith("RandomDegradation")
    # The released model's card names the random degradation; srgan-eval rebuilds the data from it
    # (was refused: RandomDegradation was not among the classes a card may name) and degrades the
    # held-out area with the nominal operator.
    from srgan.data.card import dataset_from_card
    from srgan.engine.checkpoint import load_model

    home = dataset_from_card(load_model(tmp_path / "run" / "model"))
    assert isinstance(home.degradation, RandomDegradation)
    assert home.degradation.psf_width == data.degradation.psf_width
    assert len(home.regions("test")) >= 1


# --- LR consistency -----------------------------------------------------------------------------


def test_lr_consistency_is_zero_for_an_sr_that_degrades_back_to_lr():
    term = LRConsistencyLoss("l1", "box")
    term.bind(None, 4)
    lr = torch.rand(2, 4, 8, 8)
    sr = F.interpolate(lr, scale_factor=4, mode="nearest")  # its 4x4 block means are LR exactly
    assert float(term(sr, lr)) == pytest.approx(0.0, abs=1e-7)
    assert float(term(sr + 0.1, lr)) == pytest.approx(0.1, rel=1e-4)


def test_lr_consistency_uses_the_dataset_degradation_or_the_batch_draw():
    psf = Degradation(4, psf="s2_mtf", band_names=NAMES)
    term = LRConsistencyLoss("l1", "dataset")
    term.bind(psf, 4)
    hr = torch.rand(2, 4, 32, 32)
    lr = psf.operator(hr)
    assert float(term(hr, lr)) == pytest.approx(0.0, abs=1e-7)
    assert float(term(hr, F.avg_pool2d(hr, 4))) > 1e-3  # box LR is not what this PSF makes
    drawn = _draw(RandomDegradation(4, band_names=NAMES), batch=2)
    assert float(term(hr, drawn(hr), drawn)) == pytest.approx(0.0, abs=1e-7)


def test_lr_consistency_sam_ignores_level_and_paired_data_needs_an_operator():
    term = LRConsistencyLoss("sam", "box")
    term.bind(None, 2)
    lr = torch.rand(1, 3, 4, 4) + 0.1
    sr = F.interpolate(lr, scale_factor=2, mode="nearest")
    assert float(term(2.0 * sr, lr)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="has no degradation model.*box, bicubic or bilinear"):
        LRConsistencyLoss("l1", "dataset").bind(None, 4, "dataset paired")
    with pytest.raises(ValueError, match="distance"):
        LRConsistencyLoss("l2")


def test_the_composite_feeds_lr_to_the_consistency_term_and_needs_it():
    term = LRConsistencyLoss("l1", "box")
    loss = CompositeLoss(
        {"l1": 1.0, "lr_consistency": 2.0, "adversarial": 0.0}, {"l1": L1Loss(), "lr_consistency": term}, GANLoss()
    )
    loss.bind(None, 4)
    hr = torch.rand(2, 4, 16, 16)
    sr = hr + 0.05
    total, parts = loss.content(sr, hr, lr=F.avg_pool2d(hr, 4))
    assert float(parts["lr_consistency"]) == pytest.approx(0.05, rel=1e-4)
    assert float(total) == pytest.approx(0.05 + 2 * 0.05, rel=1e-4)
    with pytest.raises(ValueError, match="lr_consistency needs the batch's LR"):
        loss.content(sr, hr)


def test_lr_consistency_composes_with_every_loss_group(composed):
    for group in ("l1_gan", "full", "esrgan"):
        cfg = composed("train", [f"loss={group}", "loss.weights.lr_consistency=0.1"])
        loss = instantiate(cfg.loss, _convert_="all") if group != "esrgan" else None
        if loss is not None:
            assert isinstance(loss.terms["lr_consistency"], LRConsistencyLoss)


# --- the nodata mask ----------------------------------------------------------------------------


def test_masked_loss_is_the_mean_over_valid_pixels_and_passes_no_gradient_there():
    loss = CompositeLoss({"l1": 1.0, "sam": 0.5, "adversarial": 0.0}, {"l1": L1Loss(), "sam": SAMLoss()}, GANLoss())
    hr = torch.rand(2, 3, 16, 16)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[:, :, :6] = False
    hr = hr * valid[:, None]  # nodata is zero-filled
    sr = (hr + 0.1).requires_grad_(True)
    junk = torch.where(valid[:, None], sr, torch.full_like(sr, 5.0))
    total, parts = loss.content(junk, hr, valid=valid)
    assert float(parts["l1"]) == pytest.approx(0.1, rel=1e-4)  # the valid pixels' mean, not 0.1 * 10/16
    total.backward()
    assert float(sr.grad[:, :, :, :6].abs().max()) == 0.0 and float(sr.grad[:, :, :, 6:].abs().min()) > 0
    unmasked = CompositeLoss({"l1": 1.0, "adversarial": 0.0}, {"l1": L1Loss()}, GANLoss(), mask_nodata=False)
    assert float(unmasked.content(junk, hr, valid=valid)[1]["l1"]) > 1.0


def test_the_generator_step_ignores_what_sr_holds_over_nodata():
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    hr = torch.rand(2, 3, 16, 16)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[0, :8] = False
    batch = {"lr": F.avg_pool2d(hr, 2), "hr": hr * valid[:, None], "hr_valid": valid}
    loss = CompositeLoss({"l1": 1.0, "adversarial": 0.0}, {"l1": L1Loss()}, GANLoss())

    class Painter(torch.nn.Module):  # SR = the upsampled LR, with a value painted over the nodata rows
        def __init__(self, paint: float):
            super().__init__()
            self.w, self.paint = torch.nn.Parameter(torch.ones(())), paint

        def forward(self, lr):
            sr = F.interpolate(lr, scale_factor=2) * self.w
            return torch.where(valid[:, None], sr, torch.full_like(sr, self.paint) * self.w)

    results = []
    for paint in (0.0, 100.0):
        g = Painter(paint)
        opt = torch.optim.SGD(g.parameters(), lr=0.1)
        sr, stats, ok = steps.generator_step(accelerator, g, torch.nn.Identity(), loss, opt, batch, 0.0)
        results.append((float(stats["l1"]), float(g.w.detach())))
        assert ok and torch.equal(sr[0, :, :8], batch["hr"][0, :, :8])  # D would see HR's fill there
    assert results[0] == pytest.approx(results[1])


def test_training_patches_carry_hr_validity(tmp_path):
    from tests.conftest import write_geotiff

    data_arr = np.random.default_rng(0).integers(100, 4000, (4, 256, 256)).astype(np.uint16)
    data_arr[:, :, :40] = 0
    path = write_geotiff(tmp_path / "holes.tif", data_arr, NAMES)
    cfg = compose_config(
        "train", ["experiment=demo", f"dataset.path={path}", "dataset.nodata=0", "dataset.patch_size=32"]
    )
    cfg.dataset.filters.max_nodata = 1.0
    data = instantiate(cfg.dataset, _convert_="all")
    items = [data.train_dataset(40, seed=1)[i] for i in range(40)]
    assert all(it["hr_valid"].shape == it["hr"].shape[-2:] for it in items)
    holed = [it for it in items if not it["hr_valid"].all()]
    assert holed, "no training patch reached the nodata columns"
    for it in holed:
        assert float(it["hr"][:, ~it["hr_valid"]].abs().max()) == 0.0

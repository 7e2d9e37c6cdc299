"""Test-time self-ensemble (``tta=d4``) and its spread (``uncertainty=tta``): the eight D4 transforms,
exact for equivariant models, the explicit mean otherwise, through the tiled and streamed paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from srgan.config import ConfigError
from srgan.evaluation.uncertainty import SampleSpread, tta_sampler
from srgan.tiling import tiled_super_resolve
from srgan.tta import D4Ensemble, check_tta, d4_inverse, d4_transform, self_ensemble
from tests.conftest import TINY_GENERATOR, model_card, write_geotiff

BANDS = ["B04", "B03", "B02", "B08"]


def explicit_passes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The eight back-transformed passes, written out with torch's own flip and rot90."""
    outs = []
    with torch.no_grad():
        for flip in (False, True):
            for k in range(4):
                t = torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))
                y = torch.rot90(model(t), -k, (-2, -1))
                outs.append(y.flip(-1) if flip else y)
    return torch.stack(outs)


class NearestSR(nn.Module):
    """Equivariant under every D4 transform: a per-pixel band mix, then nearest upsampling."""

    def __init__(self, bands: int = 3, scale: int = 2) -> None:
        super().__init__()
        self.mix, self.scale = nn.Conv2d(bands, bands, 1), scale

    def forward(self, x):
        return nn.functional.interpolate(self.mix(x), scale_factor=self.scale, mode="nearest")


class ConvSR(nn.Module):
    """Not equivariant: a fixed random 3x3 convolution (no symmetry), then nearest upsampling."""

    def __init__(self, bands: int = 3, scale: int = 2) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv, self.scale = nn.Conv2d(bands, bands, 3, padding=1), scale

    def forward(self, x):
        return nn.functional.interpolate(self.conv(x), scale_factor=self.scale, mode="nearest")


def test_the_eight_transforms_are_distinct_and_each_inverse_restores_the_input():
    square = torch.arange(9.0).reshape(1, 1, 3, 3)
    images = [d4_transform(square, i) for i in range(8)]
    assert all(not torch.equal(images[i], images[j]) for i in range(8) for j in range(i))
    # Transform 1 is a quarter turn (independently: transpose, then flip the rows), 4 the mirror.
    assert torch.equal(images[1], square.transpose(-2, -1).flip(-2))
    assert torch.equal(images[4], square.flip(-1))
    x = torch.rand(2, 3, 5, 7)  # non-square: odd quarter turns swap H and W
    for i in range(8):
        y = d4_transform(x, i)
        assert y.shape[-2:] == ((7, 5) if i % 2 else (5, 7))
        assert torch.equal(d4_inverse(y, i), x)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert d4_transform(channels_last, 1).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 5, 9)])
def test_an_equivariant_model_gives_its_plain_output(shape):
    model = NearestSR().eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        plain, ensembled = model(x), D4Ensemble(model)(x)
    assert ensembled.shape == plain.shape == (shape[0], 3, shape[2] * 2, shape[3] * 2)
    torch.testing.assert_close(ensembled, plain, rtol=0, atol=1e-6)
    assert self_ensemble(model, "none") is model


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 6, 10)])
def test_a_non_equivariant_model_gives_the_mean_of_the_eight_passes(shape):
    model = ConvSR().eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        ensembled, plain = D4Ensemble(model)(x), model(x)
    expected = explicit_passes(model, x).mean(0)
    torch.testing.assert_close(ensembled, expected, rtol=0, atol=1e-6)
    assert (ensembled - plain).abs().max() > 1e-2  # the ensemble is not the plain pass


def test_tiled_self_ensemble_of_non_square_tiles_equals_the_whole_image():
    model = NearestSR().eval()  # pointwise: tiling is exact, so only the D4 handling is measured
    lr = torch.rand(3, 11, 37)
    tiled = tiled_super_resolve(D4Ensemble(model), lr, 2, tile=16, overlap=4, batch_size=3)  # 11x16 tiles
    with torch.no_grad():
        whole = model(lr[None])[0]
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)
    conv = ConvSR().eval()
    tiled = tiled_super_resolve(D4Ensemble(conv), lr, 2, tile=16, overlap=8, batch_size=2)
    expected = explicit_passes(conv, lr[None]).mean(0)[0]
    torch.testing.assert_close(tiled[:, 4:-4, 4:-4], expected[:, 4:-4, 4:-4], rtol=0, atol=1e-5)


def test_tta_sampler_is_the_mean_and_std_of_the_eight_passes_and_d4_wraps_other_samplers():
    model = ConvSR().eval()
    x = torch.rand(2, 3, 6, 9)
    passes = explicit_passes(model, x)
    sampler = tta_sampler(model)
    assert sampler.method == "tta" and sampler.samples == 8
    out = sampler(x)
    torch.testing.assert_close(out[:, :3], passes.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 3:], passes.std(0), rtol=1e-4, atol=1e-6)
    assert float(out[:, 3:].mean()) > 1e-3
    assert sampler.with_tta("d4") is sampler  # tta=d4 with uncertainty=tta: the same run
    # tta=d4 with an ensemble: every member's sample is its own D4 mean.
    other = NearestSR().eval()
    ensemble = SampleSpread([model, other])
    wrapped = ensemble.with_tta("d4")
    assert wrapped.d4 and not ensemble.d4 and wrapped.method == "ensemble"
    with torch.no_grad():
        members = torch.stack([D4Ensemble(model)(x), other(x)])
    got = wrapped(x)
    torch.testing.assert_close(got[:, :3], members.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[:, 3:], members.std(0), rtol=1e-4, atol=1e-6)
    assert ensemble.with_tta("none") is ensemble


def test_eval_predictions_use_the_self_ensemble():
    from srgan.evaluation.regions import _predictions

    model = SimpleNamespace(generator=ConvSR().eval(), scale=2)
    lr = torch.rand(3, 10, 14)
    d4, _ = _predictions(model, lr, 16, 4, 2, torch.device("cpu"), "d4")
    plain, _ = _predictions(model, lr, 16, 4, 2, torch.device("cpu"))
    torch.testing.assert_close(d4["sr"], explicit_passes(model.generator, lr[None]).mean(0)[0], rtol=0, atol=1e-5)
    assert (d4["sr"] - plain["sr"]).abs().max() > 1e-2
    torch.testing.assert_close(d4["bicubic"], plain["bicubic"])


def test_a_bad_tta_value_is_an_error_naming_the_key(tmp_path):
    from srgan.infer import super_resolve_file

    assert check_tta("none") == "none" and check_tta("d4") == "d4"
    for bad in ("x8", "D4", None, True):
        with pytest.raises(ConfigError, match="tta must be none .* or d4"):
            check_tta(bad)
    with pytest.raises(ConfigError, match="tta"):
        super_resolve_file(tmp_path / "no-model", tmp_path / "in.tif", tmp_path / "out.tif", tta="x8")
    with pytest.raises(ValueError, match="tta must be"):
        SampleSpread([NearestSR(), NearestSR()]).with_tta("d8")


# -- srgan-infer end to end ------------------------------------------------------------------------


def _exported(tmp_path: Path):
    """The tiny RCAB generator with a random (non-zero) tail, so that it is not equivariant."""
    from srgan.engine.checkpoint import export_model
    from srgan.models import RCABGenerator

    torch.manual_seed(0)
    model = RCABGenerator(**{k: v for k, v in TINY_GENERATOR.items() if k != "_target_"}).eval()
    with torch.no_grad():
        nn.init.normal_(model.tail.weight, std=0.05)
    return export_model(model, model_card(), tmp_path / "model"), model


def _infer(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "srgan.infer", *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert out.returncode == 0, f"srgan-infer failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture
def scene(tmp_path):
    """A float32 24x56 LR scene: with tile=32, two 24x32 (non-square) tiles that overlap."""
    data = np.random.default_rng(0).uniform(0, 3000, (4, 24, 56)).astype(np.float32)
    return write_geotiff(tmp_path / "lr.tif", data, BANDS), data


@pytest.mark.slow
def test_srgan_infer_tta_d4_and_uncertainty_tta_end_to_end(tmp_path, scene):
    model_dir, model = _exported(tmp_path)
    path, data = scene
    common = [f"model={model_dir}", f"input={path}", "tile=32", "overlap=16", "batch_size=2", "progress=false"]
    out = _infer(*common, f"output={tmp_path}/d4.tif", "tta=d4")
    assert "tta=d4" in out.stdout
    _infer(*common, f"output={tmp_path}/plain.tif")
    _infer(*common, f"output={tmp_path}/u.tif", "uncertainty=tta")
    passes = explicit_passes(model, torch.from_numpy(data / 10000).float()[None])[:, 0] * 10000
    inside = (slice(None), slice(8, -8), slice(8, -8))
    with rasterio.open(tmp_path / "d4.tif") as d4, rasterio.open(tmp_path / "plain.tif") as plain:
        assert d4.tags()["tta"] == "d4" and d4.tags()["tta_passes"] == "8" and "tta" not in plain.tags()
        assert d4.shape == (96, 224) and d4.crs == plain.crs and d4.transform == plain.transform
        sr, single = d4.read(), plain.read()
    np.testing.assert_allclose(sr[inside], passes.mean(0).numpy()[inside], rtol=0, atol=0.1)
    assert np.abs(single[inside] - sr[inside]).max() > 10  # the plain pass is not the ensemble
    with rasterio.open(tmp_path / "u.tif") as mean, rasterio.open(tmp_path / "u_std.tif") as std:
        assert std.tags()["uncertainty_method"] == "tta" and std.tags()["uncertainty_samples"] == "8"
        assert mean.tags()["tta"] == "d4" and std.descriptions[0] == "B04_std"
        np.testing.assert_allclose(mean.read()[inside], sr[inside], rtol=0, atol=0.1)
        spread = std.read()
    np.testing.assert_allclose(spread[inside], passes.std(0).numpy()[inside], rtol=1e-4, atol=0.1)
    assert spread[inside].mean() > 1


def test_tta_d4_with_uncertainty_tta_is_the_same_run(tmp_path, scene):
    from srgan.engine.checkpoint import load_model
    from srgan.infer import super_resolve_file

    model_dir, _ = _exported(tmp_path)
    path, _ = scene
    exported = load_model(model_dir)
    common = {"tile": 32, "overlap": 16, "progress": False}
    outputs = []
    for name, tta in (("a", "none"), ("b", "d4")):
        result = super_resolve_file(
            exported, path, tmp_path / f"{name}.tif", sampler=tta_sampler(exported.generator), tta=tta, **common
        )
        with rasterio.open(result["output"]) as mean, rasterio.open(result["std_output"]) as std:
            outputs.append((mean.read(), std.read(), std.tags()))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    assert outputs[1][2]["uncertainty_sample_tta"] == "none" and outputs[1][2]["tta"] == "d4"


@pytest.mark.slow
def test_srgan_infer_names_a_bad_tta_value(tmp_path, scene):
    model_dir, _ = _exported(tmp_path)
    path, _ = scene
    out = _infer(f"model={model_dir}", f"input={path}", f"output={tmp_path}/o.tif", "tta=x8", ok=False)
    assert out.returncode == 2
    assert "srgan-infer: error: tta must be none" in out.stderr and "'x8'" in out.stderr
    assert not (tmp_path / "o.tif").exists()


def test_the_tta_tag_survives_histogram_matching_and_the_cog_copy(tmp_path, scene):
    from srgan.infer import super_resolve_file

    model_dir, _ = _exported(tmp_path)
    path, _ = scene
    for tta in ("d4", "none"):
        result = super_resolve_file(
            model_dir,
            path,
            tmp_path / f"{tta}.tif",
            tile=32,
            overlap=16,
            cog=True,
            histogram_match=True,
            progress=False,
            tta=tta,
        )
        with rasterio.open(result["output"]) as sr:
            assert sr.tags().get("tta") == (None if tta == "none" else "d4")
            assert sr.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"

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


def test_blend_window_ignores_shared_edges_and_keeps_image_borders():
    w = blend_window(32, 32, 12)  # every edge shared: zero within overlap // 3 = 4 px of it
    assert w[:4].eq(0).all() and w[:, -4:].eq(0).all() and w[12:20, 12:20].eq(1).all()
    corner = blend_window(32, 32, 12, edges=(False, True, False, True))  # top-left tile of an image
    assert corner[0, 0] == 1 and corner[:, -4:].eq(0).all()
    assert blend_window(8, 8, 0).eq(1).all()


def _conv_model():
    torch.manual_seed(0)
    model = RCABGenerator(4, 4, 4, n_channels=8, n_blocks=1, reduction=4).eval()
    with torch.no_grad():
        nn.init.normal_(model.tail.weight, std=0.05)
    return model


def _seam_jump(x: torch.Tensor, columns: list[int]) -> float:
    return float(torch.stack([(x[..., c] - x[..., c - 1]).abs().mean() for c in columns]).mean())


def test_tiled_equals_whole_image_at_the_centre_and_leaves_no_seam():
    model = _conv_model()
    lr = torch.rand(4, 64, 64)
    with torch.no_grad():
        whole = model(lr[None])[0]
    tiled = tiled_super_resolve(model, lr, 4, tile=32, overlap=24)
    centre = (slice(None), slice(32, -32), slice(32, -32))
    assert (tiled[centre] - whole[centre]).abs().max() < 1e-4
    # The jump across the HR columns where tiles start or end is that of the untiled image.
    from srgan.tiling import tile_origins

    starts = tile_origins(64, 32, 24)
    columns = sorted({o * 4 for o in starts[1:]} | {(o + 32) * 4 for o in starts[:-1]})
    assert abs(_seam_jump(tiled, columns) - _seam_jump(whole, columns)) < 1e-4


# -- whole-scene inference through GeoTIFF windows ------------------------------------------------


def _exported(tmp_path):
    from srgan.engine.checkpoint import export_model

    model = _conv_model()
    card = {
        "generator": {
            "_target_": "srgan.models.RCABGenerator",
            "in_channels": 4,
            "out_channels": 4,
            "scale": 4,
            "n_channels": 8,
            "n_blocks": 1,
            "reduction": 4,
        },
        "data": {
            "scale": 4,
            "bands": ["B04", "B03", "B02", "B08"],
            "band_names": ["B04", "B03", "B02", "B08"],
            "dtype": "uint16",
            "normalization": {"_target_": "srgan.data.normalization.LinearScale", "scale": 10000.0, "offset": 0.0},
        },
    }
    return export_model(model, card, tmp_path / "model"), model


def test_streamed_scene_equals_in_memory_tiling_and_keeps_nodata(tmp_path):
    import numpy as np
    import rasterio

    from srgan.infer import super_resolve_file
    from tests.conftest import write_geotiff

    model_dir, model = _exported(tmp_path)
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 3000, (4, 70, 90)).astype(np.float32)
    data[:, 5:9, 60:66] = -9999.0
    path = write_geotiff(tmp_path / "lr.tif", data, ["B04", "B03", "B02", "B08"])
    with rasterio.open(path, "r+") as dst:
        dst.nodata = -9999.0
    out = super_resolve_file(model_dir, path, tmp_path / "sr.tif", tile=32, overlap=24, batch_size=3, progress=False)
    lr = torch.from_numpy(np.where(data == -9999.0, 0.0, data) / 10000).float()
    expected = tiled_super_resolve(model, lr, 4, tile=32, overlap=24) * 10000
    with rasterio.open(out["output"]) as sr:
        values = sr.read()
        assert sr.nodata == -9999.0 and sr.descriptions == ("B04", "B03", "B02", "B08")
        assert sr.res == (2.5, 2.5) and sr.profile["tiled"]
    hole = values[:, 20:36, 240:264]
    assert (hole == -9999.0).all()
    keep = np.ones(values.shape[1:], bool)
    keep[20:36, 240:264] = False
    np.testing.assert_allclose(values[:, keep], expected.numpy()[:, keep], atol=0.05)


def test_cog_bf16_and_histogram_matching_options(tmp_path):
    import numpy as np
    import rasterio

    from srgan.infer import super_resolve_file
    from tests.conftest import write_geotiff

    model_dir, _ = _exported(tmp_path)
    data = np.random.default_rng(1).integers(100, 3000, (4, 40, 40)).astype(np.uint16)
    path = write_geotiff(tmp_path / "lr.tif", data, ["B04", "B03", "B02", "B08"])
    cog = super_resolve_file(
        model_dir, path, tmp_path / "cog.tif", tile=16, overlap=8, cog=True, bf16=True, progress=False
    )
    with rasterio.open(cog["output"]) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.dtypes[0] == "uint16"
    matched = super_resolve_file(
        model_dir, path, tmp_path / "hm.tif", tile=16, overlap=8, histogram_match=True, progress=False
    )
    with rasterio.open(matched["output"]) as src:
        sr = src.read().astype(float)
    for b in range(4):  # the SR band's quantiles are the LR band's
        np.testing.assert_allclose(np.percentile(sr[b], [10, 50, 90]), np.percentile(data[b], [10, 50, 90]), rtol=0.03)


def test_channels_last_inference_matches_contiguous(tmp_path):
    import numpy as np
    import rasterio

    from srgan.infer import super_resolve_file
    from tests.conftest import write_geotiff

    model_dir, _ = _exported(tmp_path)
    data = np.random.default_rng(1).uniform(0, 3000, (4, 40, 50)).astype(np.float32)
    path = write_geotiff(tmp_path / "lr.tif", data, ["B04", "B03", "B02", "B08"])
    outputs = []
    for channels_last in (False, True):
        out = super_resolve_file(
            model_dir,
            path,
            tmp_path / f"sr_{channels_last}.tif",
            tile=32,
            overlap=8,
            progress=False,
            channels_last=channels_last,
        )
        with rasterio.open(out["output"]) as sr:
            outputs.append(sr.read())
    np.testing.assert_allclose(outputs[0], outputs[1], atol=0.01)

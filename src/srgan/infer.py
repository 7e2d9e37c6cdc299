"""``srgan-infer``: super-resolve a GeoTIFF with a trained model, keeping its georeference.

    srgan-infer model=outputs/demo/<run> input=scene_lr.tif output=scene_sr.tif

The output has the input's CRS, a geotransform with 1/scale of the pixel size, the input's
units and data type (values rounded and clipped for integer types) and band names.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from affine import Affine
from omegaconf import DictConfig

from srgan.config import CONF_DIR
from srgan.data.rasters import Raster, RasterError, read_raster, to_dtype, write_raster
from srgan.devices import pick_device
from srgan.engine.checkpoint import load_model
from srgan.tiling import tiled_super_resolve


def super_resolve_file(
    model_path: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    bands: list[str | int] | None = None,
    tile: int = 128,
    overlap: int = 16,
    batch_size: int = 4,
    device: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Read ``input_path``, super-resolve it and write ``output_path``; returns the output path."""
    output_path = Path(output_path)
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists; pass overwrite=true to replace it")
    model = load_model(model_path)
    selection = list(bands) if bands else model.band_names
    raster = read_raster(input_path, selection)
    if raster.data.shape[0] != len(model.band_names):
        raise RasterError(f"{input_path}: {raster.data.shape[0]} bands selected, model expects {len(model.band_names)}")
    lr = torch.from_numpy(np.asarray(model.normalization.normalize(raster.data.astype(np.float32))))
    dev = pick_device(device)
    sr = tiled_super_resolve(model.generator.to(dev), lr, model.scale, tile, overlap, batch_size, dev)
    values = np.asarray(model.normalization.denormalize(sr.cpu().numpy()))
    result = Raster(
        data=to_dtype(values, raster.dtype),
        transform=raster.transform @ Affine.scale(1 / model.scale),
        crs=raster.crs,
        band_names=model.band_names,
        dtype=raster.dtype,
        nodata=raster.nodata,
    )
    return write_raster(output_path, result, overwrite=overwrite)


@hydra.main(config_path=str(CONF_DIR), config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = super_resolve_file(
        cfg.model,
        cfg.input,
        cfg.output,
        list(cfg.bands) if cfg.bands else None,
        cfg.tile,
        cfg.overlap,
        cfg.batch_size,
        cfg.device,
        cfg.overwrite,
    )
    print(f"super-resolved {cfg.input} -> {out}")


if __name__ == "__main__":
    main()

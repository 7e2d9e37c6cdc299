"""``srgan-degrade``: write one split of a dataset as GeoTIFFs in the source's units: LR (and HR).

    srgan-degrade split=test output=test_lr.tif hr_output=test_hr.tif

The LR is exactly what training and evaluation feed the model (the dataset's degradation of that
area), georeferenced with ``scale`` times the HR pixel size.
"""

from __future__ import annotations

import hydra
import numpy as np
from affine import Affine
from hydra.utils import instantiate
from omegaconf import DictConfig

from srgan.config import CONF_DIR
from srgan.data.rasters import Raster, to_dtype, write_raster


@hydra.main(config_path=str(CONF_DIR), config_name="degrade", version_base="1.3")
def main(cfg: DictConfig) -> None:
    data = instantiate(cfg.dataset, _convert_="all")
    region = data.region(cfg.split)
    outputs = [(cfg.output, region.lr, region.hr_transform @ Affine.scale(data.scale))]
    if cfg.hr_output:
        outputs.append((cfg.hr_output, region.hr, region.hr_transform))
    for path, values, transform in outputs:
        stored = to_dtype(np.asarray(data.normalization.denormalize(values.numpy())), data.dtype)
        write_raster(path, Raster(stored, transform, region.crs, data.band_names, data.dtype), overwrite=cfg.overwrite)
        bands, rows, cols = stored.shape
        print(f"{data.name} / {cfg.split}: wrote {path} ({bands}x{rows}x{cols} {data.dtype})")


if __name__ == "__main__":
    main()

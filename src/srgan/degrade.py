"""``srgan-degrade``: write one split of a dataset as GeoTIFFs in the source's units: LR (and HR).

    srgan-degrade split=test output=test_lr.tif hr_output=test_hr.tif

The LR is exactly what training and evaluation feed the model (the dataset's degradation of that
area), georeferenced with ``scale`` times the HR pixel size. The source's nodata tag is kept: HR
pixels without data stay nodata, and an LR pixel is nodata when less than half of its footprint
has data (its value is the mean of the part that has; :meth:`Resample.masked`).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from affine import Affine
from hydra.utils import instantiate
from omegaconf import DictConfig

from srgan.cli import user_errors
from srgan.config import CONF_DIR
from srgan.data.rasters import Raster, to_dtype, write_raster


@hydra.main(config_path=str(CONF_DIR), config_name="degrade", version_base="1.3")
@user_errors("srgan-degrade")
def main(cfg: DictConfig) -> None:
    data = instantiate(cfg.dataset, _convert_="all")
    region = data.region(cfg.split)
    outputs = [(cfg.output, region.lr, region.lr_valid, region.hr_transform @ Affine.scale(data.scale))]
    if cfg.hr_output:
        outputs.append((cfg.hr_output, region.hr, region.hr_valid, region.hr_transform))
    for path in [o[0] for o in outputs]:  # refuse before writing anything
        if Path(path).exists() and not cfg.overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    nodata = getattr(data, "nodata", None)
    for path, values, valid, transform in outputs:
        stored = to_dtype(np.asarray(data.normalization.denormalize(values.numpy())), data.dtype)
        raster = Raster(stored, transform, region.crs, data.band_names, data.dtype, nodata, valid.numpy())
        write_raster(path, raster, overwrite=cfg.overwrite)
        bands, rows, cols = stored.shape
        missing = int((~valid).sum())
        note = f", {missing} nodata px" if missing else ""
        print(f"{data.name} / {cfg.split}: wrote {path} ({bands}x{rows}x{cols} {data.dtype}{note})")


if __name__ == "__main__":
    main()

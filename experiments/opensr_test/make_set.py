"""Write a dataset's held-out split as a test set in opensr-test's two forms.

python experiments/opensr_test/make_set.py <out folder> [name] [dataset overrides...]
  e.g. make_set.py outputs/opensr_test demo_test dataset=s2_rgbn_x4

The split's areas are cut into square HR chips (``chip=`` HR px, default 128; partial chips at the
edges are dropped, as are chips with a pixel without data) and written in stored units:
``<out>/<name>.pkl`` (a dict of N x C x H x W arrays ``L2A`` and ``HRharm``, as opensr_test.load
keeps its sets) and ``<out>/<name>/{L2A,hr_harmonized}/ROI_<i>.tif`` with each chip's georeference.
The LR is the dataset's own LR of that area: for the bundled Sentinel-2 sample, the 4 x 4 block mean
of L1C top-of-atmosphere reflectance, not an L2A image: the names are the format's slots.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import rasterio
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from srgan.config import CONF_DIR


def stored(normalization, x) -> np.ndarray:
    return np.asarray(normalization.denormalize(x), dtype=np.float64)


def main(argv: list[str]) -> None:
    out, name = Path(argv[0]), (argv[1] if len(argv) > 1 else "demo_test")
    overrides = [a for a in argv[2:] if not a.startswith(("chip=", "split="))]
    chip = int(next((a.split("=")[1] for a in argv[2:] if a.startswith("chip=")), 128))
    split = next((a.split("=")[1] for a in argv[2:] if a.startswith("split=")), "test")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data = instantiate(cfg.dataset, _convert_="all")
    s, q = data.scale, chip // data.scale
    lrs, hrs, places = [], [], []
    for region in data.regions(split):
        hr = stored(data.normalization, region.hr)
        lr = stored(getattr(data, "lr_normalization", data.normalization), region.lr)
        for r in range(0, hr.shape[1] - chip + 1, chip):
            for c in range(0, hr.shape[2] - chip + 1, chip):
                if not bool(region.hr_valid[r : r + chip, c : c + chip].all()):
                    continue
                hrs.append(hr[:, r : r + chip, c : c + chip])
                lrs.append(lr[:, r // s : r // s + q, c // s : c // s + q])
                places.append((region.hr_transform * rasterio.Affine.translation(c, r), region.crs))
    if not hrs:
        raise SystemExit(f"no whole {chip} px chip in the {split} split")
    dtype = np.dtype(data.dtype)
    lr_stack = np.stack(lrs).round().astype(dtype) if dtype.kind in "ui" else np.stack(lrs).astype(dtype)
    hr_stack = np.stack(hrs).round().astype(dtype) if dtype.kind in "ui" else np.stack(hrs).astype(dtype)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.pkl").write_bytes(pickle.dumps({"L2A": lr_stack, "HRharm": hr_stack}, protocol=4))
    for folder, stack, factor in (("L2A", lr_stack, s), ("hr_harmonized", hr_stack, 1)):
        (out / name / folder).mkdir(parents=True, exist_ok=True)
        for i, (image, (transform, crs)) in enumerate(zip(stack, places)):
            profile = dict(driver="GTiff", width=image.shape[2], height=image.shape[1], count=image.shape[0])
            with rasterio.open(
                out / name / folder / f"ROI_{i:04d}.tif",
                "w",
                **profile,
                dtype=image.dtype,
                crs=crs,
                transform=transform * rasterio.Affine.scale(factor),
            ) as dst:
                dst.write(image)
                dst.descriptions = tuple(data.band_names)
    print(f"{len(hrs)} images of {chip} px ({data.name}, {split} split) -> {out / name}.pkl and {out / name}/")


if __name__ == "__main__":
    main(sys.argv[1:])

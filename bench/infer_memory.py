"""Peak memory and speed of whole-scene ``srgan-infer`` for two scene sizes (not a test).

    python bench/infer_memory.py [--shapes 256x256 1024x1024 4096x1024] [--tile 128] [--overlap 16]

Shapes are LR rows x columns. Each shape runs in a fresh subprocess (so its peak resident set
size is its own) on a synthetic 4-band uint16 LR GeoTIFF, with a randomly initialised generator
of the demo's size (RCAB, 32 channels, 4 blocks, x4): the weights do not change the cost. Prints
a JSON line per shape and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import numpy as np, rasterio, torch
from affine import Affine
from rasterio.crs import CRS
sys.path.insert(0, sys.argv[1] + "/src")
from srgan.engine.checkpoint import export_model
from srgan.infer import super_resolve_file
from srgan.models import RCABGenerator
(rows, cols), tile, overlap, work = map(int, sys.argv[2].split("x")), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
torch.nn.init.normal_((g := RCABGenerator(4, 4, 4, n_channels=32, n_blocks=4)).tail.weight, std=0.02)
card = {"generator": {"_target_": "srgan.models.RCABGenerator", "in_channels": 4, "out_channels": 4, "scale": 4,
        "n_channels": 32, "n_blocks": 4},
        "data": {"scale": 4, "bands": ["B04", "B03", "B02", "B08"], "band_names": ["B04", "B03", "B02", "B08"],
                 "dtype": "uint16", "normalization": {"_target_": "srgan.data.normalization.LinearScale",
                 "scale": 10000.0, "offset": 0.0}}}
model = export_model(g, card, f"{work}/model")
path = f"{work}/lr.tif"
with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=4, dtype="uint16",
                   crs=CRS.from_epsg(32618), transform=Affine(40, 0, 0, 0, -40, 0), tiled=True) as dst:
    for r in range(0, rows, 256):
        n = min(256, rows - r)
        dst.write(np.random.default_rng(r).integers(200, 3000, (4, n, cols)).astype("uint16"),
                  window=rasterio.windows.Window(0, r, cols, n))
    dst.descriptions = ("B04", "B03", "B02", "B08")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = super_resolve_file(model, path, f"{work}/sr.tif", tile=tile, overlap=overlap, batch_size=4,
                         progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
mpx = 16 * rows * cols / 1e6
print(json.dumps({"lr_shape": f"{rows}x{cols}", "sr_megapixels": mpx, "seconds": out["seconds"],
                  "output_mpx_per_s": mpx / out["seconds"], "tiles": out["tiles"],
                  "peak_rss_mb": peak / 1024, "rss_before_inference_mb": before / 1024,
                  "whole_array_output_mb": 2 * 4 * mpx * 1e6 * 4 / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["256x256", "1024x1024", "4096x1024"])
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as work:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(ROOT), shape, str(args.tile), str(args.overlap), work],
                capture_output=True,
                text=True,
                check=True,
            )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| LR rows x cols | SR Mpx | s | SR Mpx/s | peak RSS MB | RSS before MB | whole SR arrays would be MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['lr_shape']} | {r['sr_megapixels']:.1f} | {r['seconds']:.1f} | "
            f"{r['output_mpx_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_before_inference_mb']:.0f} | "
            f"{r['whole_array_output_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()

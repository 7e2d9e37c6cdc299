"""results.md from `srgan-eval ... benchmark=opensr_test` JSONs: opensr-test's table (the package's
numbers, mean +- std over images) and srgan's own measures of the same images beside it.

python experiments/opensr_test/table.py eval_pickle.json [eval_geotiff.json] > results.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from srgan.evaluation.benchmark import HIGHER_IS_BETTER, MEASURES

OWN = [
    ("psnr", "PSNR (dB, pooled)"),
    ("ssim", "SSIM"),
    ("lpips", "LPIPS (AlexNet, per band)"),
    ("sam_deg", "spectral angle (deg)"),
    ("consistency_reflectance_l1", "consistency: reflectance L1"),
    ("consistency_spectral_sam_deg", "consistency: spectral angle (deg)"),
    ("consistency_spatial_shift_px", "consistency: shift (LR px)"),
    ("synthesis_l1", "synthesis: mean abs(SR - bicubic)"),
    ("synthesis_ratio", "synthesis over HR's detail"),
    ("improvement_share", "improvement share (L1, argmin)"),
    ("omission_share", "omission share"),
    ("hallucination_share", "hallucination share"),
]


def main(paths: list[str]) -> None:
    reports = [json.loads(Path(p).read_text()) for p in paths]
    first = reports[0]
    bench = first["benchmark"]
    lines = [
        "# opensr-test on the demo model's held-out test area",
        "",
        f"Model: `{Path(first['model']).parent.name}`; set: `{first['path']}` ({bench['images']} images, "
        f"x{first['scale']}, bands {', '.join(first['bands'])}); written by `run.sh`.",
        "",
        f"## opensr-test {bench['version']} (the package, its default `Config`), mean ± std over images",
        "",
        "| method | " + " | ".join(f"{k} {'↑' if k in HIGHER_IS_BETTER else '↓'}" for k in MEASURES) + " |",
        "|:--|" + "--:|" * len(MEASURES),
    ]
    for method, values in bench["summary"].items():
        cells = [f"{values[k]['mean']:.4f} ± {values[k]['std']:.4f}" for k in MEASURES]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Settings: "
        + ", ".join(f"`{k}={v}`" for k, v in bench["config"].items())
        + f", `gradient_threshold={bench['gradient_threshold']}`.",
        "",
        "## srgan's own measures of the same images (pooled over them)",
        "",
        "| measure | " + " | ".join(first["results"]) + " |",
        "|:--|" + "--:|" * len(first["results"]),
    ]
    for key, label in OWN:
        lines.append(f"| {label} | " + " | ".join(f"{r[key]:.4g}" for r in first["results"].values()) + " |")
    if len(reports) > 1:
        same = all(r["benchmark"]["summary"] == bench["summary"] for r in reports[1:])
        lines += ["", f"The set's GeoTIFF form gives {'the same' if same else 'DIFFERENT'} opensr-test numbers."]
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Zoomed crops of the study's models side by side: HR, bicubic and every run, on the test area's
two tiles with the most detail that bicubic misses, all with HR's stretch (one figure).

    python experiments/perception_distortion/figure.py [--out outputs/perception-distortion] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from srgan.data.card import dataset_from_card  # noqa: E402
from srgan.engine.checkpoint import load_model  # noqa: E402
from srgan.models.blocks import upsample_image  # noqa: E402
from srgan.tiling import tiled_super_resolve  # noqa: E402
from srgan.viz import composite  # noqa: E402

ORDER = (
    "pretrain",
    "l1",
    "l1_sam",
    "gan_vanilla",
    "gan_ragan",
    "gan_hinge",
    "gan_vanilla_w02",
    "gan_ragan_w02",
    "gan_hinge_w02",
    "gan_ragan_w05",
    "l1_perceptual_gan",
    "l1_perceptual_gan_p02",
    "l1_perceptual_gan_p05",
    "l1_perceptual_gan_p005",
    "l1_perceptual_gan_p01",
    "l1_perceptual_gan_p01_lrc",
    "esrgan",
    "gan_lr_consistency",
)


def _spots(hr: torch.Tensor, bicubic: torch.Tensor, size: int, count: int) -> list[tuple[int, int]]:
    detail = torch.nn.functional.avg_pool2d((hr - bicubic).abs().mean(0)[None, None], size, size)[0, 0]
    order = torch.argsort(detail.flatten(), descending=True)[:count].tolist()
    return [(i // detail.shape[1] * size, i % detail.shape[1] * size) for i in order]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "outputs" / "perception-distortion"))
    parser.add_argument("--size", type=int, default=64, help="HR pixels of each crop")
    parser.add_argument("--figure", default=str(Path(__file__).with_name("crops.png")))
    args = parser.parse_args()
    runs = [name for name in ORDER if (Path(args.out) / name / "model").is_dir()]
    first = load_model(Path(args.out) / runs[0])
    data = dataset_from_card(first)
    region = data.region("test")
    bicubic = upsample_image(region.lr[None], data.scale, "bicubic")[0]
    panels = {"HR": region.hr, "bicubic": bicubic}
    with torch.inference_mode():
        for name in runs:
            model = load_model(Path(args.out) / name)
            panels[name] = tiled_super_resolve(model.generator.eval(), region.lr, data.scale)
    spots = _spots(region.hr, bicubic, args.size, 2)
    names = list(panels)
    fig, axes = plt.subplots(len(spots), len(names), figsize=(1.6 * len(names), 1.75 * len(spots)), squeeze=False)
    for row, (r, c) in enumerate(spots):
        crops = [panels[n][:, r : r + args.size, c : c + args.size] for n in names[1:]] + [
            panels["HR"][:, r : r + args.size, c : c + args.size]
        ]
        images = composite(crops, data.rgb_indices)
        images = [images[-1]] + images[:-1]  # HR first; the stretch is HR's
        for ax, name, image in zip(axes[row], names, images):
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=7)
    fig.suptitle(
        f"{data.name} test area, x{data.scale}: {args.size} px crops with the most detail bicubic misses", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(args.figure, dpi=130)
    print(f"written to {args.figure}")


if __name__ == "__main__":
    main()

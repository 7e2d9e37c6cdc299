"""The generator's tail folded through the last pixel shuffle, against the layers as written (not a test).

    python bench/tail_fold.py                       # bench-peer's generator and the demo's, 5 rounds
    python bench/tail_fold.py --rounds 7 --json bench/results/tail_fold_cpu.json

On the CPU, inference runs ``tail(leaky(pixel_shuffle(z, 2)))`` as ``pixel_shuffle(tail'(leaky(z)), 2)``
(``SRGenerator._folded_tail``). This times one forward of each generator both ways in one
process, rounds interleaved (which way goes first alternates), in srgan-infer's setting
(channels-last, ``inference_mode``, fp32), and checks that both give the same output. It also
times the tail alone, as written (the pixel shuffle and the ``k x k`` conv at full resolution)
against folded, for tail kernels 3, 5 and 9 and for the x3 stage, which the generator does not fold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import _timed  # noqa: E402

from srgan.models.blocks import fold_conv_through_pixel_shuffle  # noqa: E402
from srgan.models.generators import RCABGenerator  # noqa: E402

GENERATORS = {
    # bench/peer.py's protocol: the reference's RCAB 64 x 16 with 9x9 head and tail, x4, 4 bands.
    "peer RCAB 64x16 9x9 tail, 4 x 64 px": (
        dict(n_channels=64, n_blocks=16, head_kernel=9, tail_kernel=9, res_scale=0.2),
        (4, 4, 64, 64),
    ),
    # conf/experiment/demo.yaml's generator (rcab, 32 x 4, 3x3 tail) at srgan-infer's 128 px tiles.
    "demo RCAB 32x4 3x3 tail, 4 x 128 px": (dict(n_channels=32, n_blocks=4), (4, 4, 128, 128)),
}


def _interleaved(ways: dict[str, Any], rounds: int, repeats: int) -> dict[str, Any]:
    """Time each way (a callable) once per round, which goes first alternating; the fastest of
    ``repeats`` calls counts for a round. Median and min - max over rounds, and the speed-up."""
    names = list(ways)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(min(_timed(ways[name], warmup=1, repeats=repeats)))
    out: dict[str, Any] = {
        name: {"median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3, "max_ms": max(t) * 1e3}
        for name, t in times.items()
    }
    out["speedup"] = out["as_written"]["median_ms"] / out["folded"]["median_ms"]
    return out


def bench_generator(kwargs: dict[str, Any], shape: tuple[int, ...], rounds: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    g = RCABGenerator(shape[1], shape[1], 4, **kwargs).eval().to(memory_format=torch.channels_last)
    torch.nn.init.normal_(g.tail.weight, std=0.01)  # a trained-looking tail, not the zero start
    x = torch.rand(shape).contiguous(memory_format=torch.channels_last)

    def forward(fold: bool) -> torch.Tensor:
        g.fold_tail = fold
        return g(x)

    with torch.inference_mode():
        written, folded = forward(False), forward(True)
        out = _interleaved({"folded": lambda: forward(True), "as_written": lambda: forward(False)}, rounds, repeats)
    g.fold_tail = True
    out["max_abs_diff"] = float((folded - written).abs().max())
    out["output_max"] = float(written.abs().max())
    return out


def bench_tail(kernel: int, factor: int, shape: tuple[int, ...], rounds: int, repeats: int) -> dict[str, Any]:
    """The tail alone: shuffle + k x k conv (64 -> 4) at full resolution, against the folded conv + shuffle."""
    torch.manual_seed(0)
    n, c, h, w = shape
    z = torch.randn(n, c * factor * factor, h, w).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(4, c, kernel, kernel) * 0.01, torch.zeros(4)
    fw, fb, fp = fold_conv_through_pixel_shuffle(weight, bias, factor)

    def as_written() -> torch.Tensor:
        return F.conv2d(F.pixel_shuffle(z, factor), weight, bias, 1, kernel // 2)

    def folded() -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(z, fw, fb, 1, fp), factor)

    with torch.inference_mode():
        diff = float((as_written() - folded()).abs().max())
        out = _interleaved({"folded": folded, "as_written": as_written}, rounds, repeats)
    out["gflop_as_written"] = 2 * c * 4 * kernel * kernel * n * h * w * factor**2 / 1e9
    out["gflop_folded"] = 2 * fw.shape[0] * fw.shape[1] * fw.shape[2] * fw.shape[3] * n * h * w / 1e9
    out["max_abs_diff"] = diff
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="forwards per round; the fastest counts")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    result: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "generators": {},
        "tails": {},
    }
    for name, (kwargs, shape) in GENERATORS.items():
        r = result["generators"][name] = bench_generator(kwargs, shape, args.rounds, args.repeats)
        print(
            f"{name}: as written {r['as_written']['median_ms']:.0f} ms "
            f"({r['as_written']['min_ms']:.0f}-{r['as_written']['max_ms']:.0f}), folded "
            f"{r['folded']['median_ms']:.0f} ms ({r['folded']['min_ms']:.0f}-{r['folded']['max_ms']:.0f}): "
            f"{r['speedup']:.2f}x; max |diff| {r['max_abs_diff']:.1e} of {r['output_max']:.2f}"
        )
    for factor, kernel in ((2, 3), (2, 5), (2, 9), (3, 3), (3, 9)):
        name = f"64->4 {kernel}x{kernel} after x{factor} shuffle, 4 x {128 // factor * factor} px out"
        shape = (4, 64, 128 // factor, 128 // factor)
        r = result["tails"][name] = bench_tail(kernel, factor, shape, args.rounds, args.repeats)
        print(
            f"{name}: as written {r['as_written']['median_ms']:.1f} ms ({r['gflop_as_written']:.2f} GFLOP), "
            f"folded {r['folded']['median_ms']:.1f} ms ({r['gflop_folded']:.2f} GFLOP): {r['speedup']:.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

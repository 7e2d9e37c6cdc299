"""Training and inference speed, memory and hardware efficiency (``make bench``; not a test).

    python bench/speed.py                              # everything below, JSON + table on stdout
    python bench/speed.py --models rcab --quick        # fewer repeats and variants
    python bench/speed.py --json bench.json            # also write the JSON to a file

For each generator (``rcab``, ``rrdb``: 64 channels, 16 blocks, 4 bands, x4, with the ``srgan``
discriminator and L1 + adversarial loss) it measures, each in a fresh subprocess so that its peak
resident memory (``ru_maxrss``) is its own and its thread count is set before torch starts:

* ``train``: one full GAN training step as ``srgan-train`` runs it (``engine.steps.update``, via ``gan_step``: G and
  D updates from one shared D pass, or with ``trainer.fused_gan_step=false`` ``generator_step`` then
  ``discriminator_step`` on the same SR; then the EMA update), batch 4 of 32x32 LR / 128x128 HR, in
  the adversarial phase; steps per second from the median of the timed steps after warm-up;
* ``generator``: inference on batches of 64x64 LR tiles (``torch.inference_mode``), output
  megapixels per second and achieved GFLOP/s of the forward (FLOPs counted by
  ``torch.utils.flop_counter``) against the machine's measured 3x3 convolution and matmul GFLOP/s;
* ``scene``: whole-scene ``srgan-infer`` (``infer.super_resolve_file``) on a synthetic 4-band
  uint16 LR GeoTIFF (``--scene`` rows = columns, 1024 by default), output megapixels per second.

Variants toggle one option against the defaults that ``srgan-train`` / ``srgan-infer`` use:
channels-last, ``torch.compile``, bf16 autocast, Adam implementation (for-loop, foreach, fused) and
the thread count. Random weights: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BANDS, SCALE, TRAIN_LR, INFER_LR = 4, 4, 32, 64
# Full Sentinel-2 tile at 10 m: 10980 x 10980 LR pixels.
S2_TILE_OUTPUT_MPX = (10980 * SCALE) ** 2 / 1e6

# option -> what it changes; {} is the configuration srgan-train / srgan-infer run by default.
TRAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "contiguous": {"channels_last": False},
    "channels_last": {"channels_last": True},
    "separate_steps": {"overrides": ["trainer.fused_gan_step=false"]},
    "adam_forloop": {"adam": "forloop"},
    "adam_foreach": {"adam": "foreach"},
    "adam_fused": {"adam": "fused"},
    "compile": {"compile": True},
    "bf16": {"precision": "bf16"},
    "1_thread": {"threads": 1},
}
INFER_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "contiguous": {"channels_last": False},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16": {"precision": "bf16"},
    "1_thread": {"threads": 1},
}
SCENE_VARIANTS: dict[str, dict[str, Any]] = {"default": {}, "bf16": {"precision": "bf16"}}
QUICK = {"train": ["default", "contiguous", "adam_forloop"], "generator": ["default", "contiguous"], "scene": []}


# --------------------------------------------------------------------------- worker side


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _compose(model: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(ROOT / "src"))
    from srgan.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"generator={model}",
                "discriminator=srgan",
                "loss=l1_gan",
                "dataset=synthetic",
                f"dataset.scale={SCALE}",
                *overrides,
            ],
        )


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Any, warmup: int, repeats: int, device: str = "cpu") -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _forward_flops(model: Any, shape: tuple[int, ...]) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(shape))
    return float(counter.get_total_flops())


def machine_peak(repeats: int, device: str) -> dict[str, Any]:
    """Measured dense throughput: an n^3 matmul and a 64->64 3x3 conv (channels-last).

    fp32 on the CPU; on a GPU bf16 (what its bf16 runs are measured against)."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n, batch = (8192, 64) if device == "cuda" else (2048, 8)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    mm = statistics.median(_timed(lambda: a @ b, 2, repeats, device))
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device, dtype, memory_format=torch.channels_last)
    x = torch.randn(batch, 64, 128, 128, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        cv = statistics.median(_timed(lambda: conv(x), 2, repeats, device))
    conv_flops = 2 * 64 * 64 * 9 * batch * 128 * 128
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine()),
        "dtype": str(dtype).removeprefix("torch."),
        "matmul_gflops": 2 * n**3 / mm / 1e9,
        "conv3x3_gflops": conv_flops / cv / 1e9,
    }


def bench_train(model: str, opts: dict[str, Any], warmup: int, repeats: int, device: str, batch: int) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    from srgan.engine.build import build_networks, fused_gan_step
    from srgan.engine.ema import EMA
    from srgan.engine.steps import update

    overrides = ["loss.weights.adversarial=0.01", *opts.get("overrides", [])]
    if "channels_last" in opts:
        overrides.append(f"trainer.channels_last={str(opts['channels_last']).lower()}")
    if "compile" in opts:
        overrides.append(f"trainer.compile={str(opts['compile']).lower()}")
    if "precision" in opts:
        overrides.append(f"trainer.precision={opts['precision']}")
    adam = opts.get("adam")
    if adam is not None:
        for net in ("g", "d"):
            overrides += [
                f"schedule.optimizer_{net}.foreach={str(adam == 'foreach').lower()}",
                f"schedule.optimizer_{net}.fused={str(adam == 'fused').lower()}",
            ]
    cfg = _compose(model, overrides)
    trainer, schedule = cfg.trainer, cfg.schedule
    torch.manual_seed(0)
    accelerator = Accelerator(
        mixed_precision=trainer.precision, cpu=device == "cpu", dynamo_backend="inductor" if trainer.compile else "no"
    )
    generator, discriminator, loss, optimizer_g, optimizer_d = build_networks(cfg, accelerator.device)
    generator, discriminator, optimizer_g, optimizer_d = accelerator.prepare(
        generator, discriminator, optimizer_g, optimizer_d
    )
    nets = SimpleNamespace(
        generator=generator, discriminator=discriminator, loss=loss, optimizer_g=optimizer_g, optimizer_d=optimizer_d
    )
    ema = EMA(accelerator.unwrap_model(generator), schedule.ema.decay)
    g_module = accelerator.unwrap_model(generator)
    generator.train()
    discriminator.train()
    fmt = torch.channels_last if trainer.channels_last else torch.contiguous_format
    hr = torch.rand(batch, BANDS, TRAIN_LR * SCALE, TRAIN_LR * SCALE, device=accelerator.device)
    hr = hr.contiguous(memory_format=fmt)
    lr = torch.nn.functional.avg_pool2d(hr, SCALE).contiguous(memory_format=fmt)
    data = {"lr": lr, "hr": hr}
    step = [0]
    fused = fused_gan_step(trainer.fused_gan_step, accelerator.unwrap_model(discriminator))

    def one_step() -> None:
        # The loop's own update (a generator step with D due, no holdback), then the EMA.
        update(accelerator, nets, data, 0.01, train_d=True, holdback=None, fused=fused, grad_clip=None)
        ema.update(g_module, step[0])
        step[0] += 1

    times = _timed(one_step, warmup, repeats, device)
    median = statistics.median(times)
    flops = None
    if not trainer.compile:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            one_step()
        flops = counter.get_total_flops()
    return {
        "step_gflop": flops / 1e9 if flops else None,
        "achieved_gflops": flops / median / 1e9 if flops else None,
        "step_s_median": median,
        "steps_per_s": 1 / median,
        "step_s_all": times,
        "fused_gan_step": fused,
        "optimizer": type(optimizer_g.optimizer).__name__,
        "adam_impl": adam or _adam_impl(optimizer_g.optimizer),
    }


def _adam_impl(optimizer: Any) -> str:
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "fused"
    if group.get("foreach") is None:  # torch's choice at step time: foreach when the tensors are on CUDA
        return "foreach" if group["params"][0].is_cuda else "forloop"
    return "foreach" if group["foreach"] else "forloop"


def bench_generator(
    model: str, opts: dict[str, Any], warmup: int, repeats: int, device: str, batch: int
) -> dict[str, Any]:
    import torch
    from hydra.utils import instantiate

    cfg = _compose(model, opts.get("overrides", []))
    # srgan-infer's default layout (conf/infer.yaml: channels_last: true)
    channels_last = opts.get("channels_last", True)
    generator = instantiate(cfg.generator, _convert_="all").eval()
    flops = _forward_flops(generator, (1, BANDS, INFER_LR, INFER_LR)) * batch
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    generator.to(device, memory_format=fmt)
    forward = torch.compile(generator) if opts.get("compile") else generator
    x = torch.rand(batch, BANDS, INFER_LR, INFER_LR, device=device).contiguous(memory_format=fmt)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=opts.get("precision") == "bf16")

    def run() -> None:
        with torch.inference_mode(), autocast:
            forward(x)

    times = _timed(run, warmup, repeats, device)
    median = statistics.median(times)
    mpx = batch * (INFER_LR * SCALE) ** 2 / 1e6
    return {
        "batch_s_median": median,
        "output_mpx_per_s": mpx / median,
        "tiles_per_s": batch / median,
        "gflop_per_output_mpx": flops / 1e9 / mpx,
        "achieved_gflops": flops / median / 1e9,
        "batch_s_all": times,
    }


def bench_scene(model: str, opts: dict[str, Any], size: int, device: str, tile: int, batch: int) -> dict[str, Any]:
    import numpy as np
    import rasterio
    import torch
    from affine import Affine
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from srgan.engine.checkpoint import export_model
    from srgan.infer import super_resolve_file

    cfg = _compose(model, opts.get("overrides", []))
    torch.manual_seed(0)
    generator = instantiate(cfg.generator, _convert_="all")
    names = [f"B{i}" for i in range(BANDS)]
    card = {
        "generator": OmegaConf.to_container(cfg.generator, resolve=True),
        "data": {
            "scale": SCALE,
            "bands": names,
            "band_names": names,
            "dtype": "uint16",
            "normalization": {"_target_": "srgan.data.normalization.LinearScale", "scale": 10000.0, "offset": 0.0},
        },
    }
    with tempfile.TemporaryDirectory() as work:
        folder = export_model(generator, card, Path(work) / "model")
        path = Path(work) / "lr.tif"
        profile = dict(driver="GTiff", width=size, height=size, count=BANDS, dtype="uint16", tiled=True)
        profile.update(crs=CRS.from_epsg(32633), transform=Affine(10 * SCALE, 0, 0, 0, -10 * SCALE, 0))
        with rasterio.open(path, "w", **profile) as dst:
            for row in range(0, size, 256):
                n = min(256, size - row)
                block = np.random.default_rng(row).integers(200, 3000, (BANDS, n, size)).astype("uint16")
                dst.write(block, window=Window(0, row, size, n))
            dst.descriptions = tuple(names)
        start = time.perf_counter()
        out = super_resolve_file(
            folder,
            path,
            Path(work) / "sr.tif",
            tile=tile,
            batch_size=batch,
            device=device,
            bf16=opts.get("precision") == "bf16",
            progress=False,
            **({"channels_last": opts["channels_last"]} if "channels_last" in opts else {}),
        )
        seconds = time.perf_counter() - start
    mpx = (size * SCALE) ** 2 / 1e6
    return {
        "lr_size": size,
        "tile": tile,
        "batch": batch,
        "seconds": seconds,
        "output_mpx_per_s": mpx / seconds,
        "tiles": out["tiles"],
        # extrapolated linearly in area from this scene, not measured
        "s2_tile_seconds_estimate": S2_TILE_OUTPUT_MPX / (mpx / seconds),
    }


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    threads = spec["opts"].get("threads")
    if threads:
        torch.set_num_threads(threads)
    kind, device = spec["kind"], spec.get("device", "cpu")
    if kind == "peak":
        result = machine_peak(spec["repeats"], device)
    elif kind == "train":
        result = bench_train(spec["model"], spec["opts"], spec["warmup"], spec["repeats"], device, spec["train_batch"])
    elif kind == "generator":
        result = bench_generator(
            spec["model"], spec["opts"], spec["warmup"], spec["repeats"], device, spec["infer_batch"]
        )
    elif kind == "scene":
        result = bench_scene(
            spec["model"], spec["opts"], spec["scene"], device, spec["scene_tile"], spec["scene_batch"]
        )
    else:
        raise ValueError(f"unknown benchmark kind {kind!r}")
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {**spec, **result, "threads": torch.get_num_threads(), "peak_rss_mb": _peak_rss_mb()}


# --------------------------------------------------------------------------- driver side


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark {spec} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict[str, Any]], peak: dict[str, Any]) -> str:
    ref = peak["conv3x3_gflops"]
    lines = [
        f"machine: {peak['device']}, {os.cpu_count()} CPUs; {peak['dtype']} matmul {peak['matmul_gflops']:.0f} "
        f"GFLOP/s, 3x3 conv (channels-last) {ref:.0f} GFLOP/s",
        "",
        "| what | model | variant | batch | median | throughput | GFLOP/s (of conv peak) | peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        eff = ""
        if r.get("achieved_gflops"):
            eff = f"{r['achieved_gflops']:.0f} ({100 * r['achieved_gflops'] / ref:.0f} %)"
        if r["kind"] == "train":
            what, batch = "GAN train step", r["train_batch"]
            median, rate = f"{r['step_s_median']:.3f} s/step", f"{r['steps_per_s']:.3f} steps/s"
        elif r["kind"] == "generator":
            what, batch = "G inference", r["infer_batch"]
            median, rate = f"{r['batch_s_median']:.3f} s/batch", f"{r['output_mpx_per_s']:.3f} Mpx/s"
        else:
            what, batch = f"srgan-infer {r['scene']}x{r['scene']}", r["scene_batch"]
            median, rate = f"{r['seconds']:.1f} s/scene", f"{r['output_mpx_per_s']:.3f} Mpx/s"
        name = f"{what} | {r['model']} | {r['variant']} | {batch}"
        lines.append(f"| {name} | {median} | {rate} | {eff} | {r['peak_rss_mb']:.0f} |")
    scenes = [r for r in results if r["kind"] == "scene"]
    for r in scenes:
        lines.append(
            f"\nfull Sentinel-2 tile (10980 x 10980 LR, x{SCALE}), {r['model']}: about "
            f"{r['s2_tile_seconds_estimate'] / 60:.1f} min (extrapolated from the {r['scene']}x{r['scene']} scene)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="rcab,rrdb")
    parser.add_argument("--kinds", default="train,generator,scene")
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scene", type=int, default=1024, help="LR rows = columns of the srgan-infer scene")
    parser.add_argument("--scene-tile", type=int, default=128, help="srgan-infer tile (LR pixels)")
    parser.add_argument("--scene-batch", type=int, default=4, help="srgan-infer tiles per batch")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--infer-batch", type=int, default=4, help="64x64 LR tiles per generator batch")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer variants, no scene")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    peak = run_worker({"kind": "peak", "opts": {}, "repeats": args.repeats, "device": device})
    print(json.dumps(peak), flush=True)
    results = []
    catalogue = {"train": TRAIN_VARIANTS, "generator": INFER_VARIANTS, "scene": SCENE_VARIANTS}
    for model in args.models.split(","):
        for kind in args.kinds.split(","):
            names = list(catalogue[kind])
            if args.quick:
                names = [n for n in names if n in QUICK[kind]]
            if args.variants:
                names = [n for n in names if n in args.variants.split(",")]
            for name in names:
                spec = {"kind": kind, "model": model, "variant": name, "opts": catalogue[kind][name]}
                spec.update(warmup=args.warmup, repeats=args.repeats, device=device, scene=args.scene)
                spec.update(train_batch=args.train_batch, infer_batch=args.infer_batch)
                spec.update(scene_tile=args.scene_tile, scene_batch=args.scene_batch)
                result = run_worker(spec)
                print(json.dumps(result), flush=True)
                results.append(result)
    report = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, **peak}, "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print()
    print(table(results, peak))


if __name__ == "__main__":
    main()

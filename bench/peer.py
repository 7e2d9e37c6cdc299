"""srgan against the reference implementation, opensr-srgan 0.4.3, side by side (``make bench-peer``).

    make bench-peer                       # creates .venv-peer with opensr-srgan, then runs this
    python bench/peer.py --rounds 3       # with .venv-peer in place

The same model on both sides: RCAB generator, 64 channels, 16 blocks, 4 bands, x4, 9x9 head and
tail convs (the reference's ``large_kernel_size``; srgan's ``generator.head_kernel/tail_kernel``),
so both do 288 kFLOP per output pixel; the SRGAN discriminator (8 conv blocks, 3x3 kernels,
64 -> 512 channels, a 1024-unit dense layer; the reference adds batch norm and a 6x6-pooled head);
L1 + adversarial (BCE) loss, perceptual weight 0; batch 4 of 32x32 LR / 128x128 HR; fp32; in the
adversarial phase. FLOPs of one step are counted on both sides with ``torch.utils.flop_counter``.

* training: the reference runs its own ``training_step`` inside a ``pytorch_lightning.Trainer``
  (CPU, fp32, logger, checkpointing and progress bar off: its most favourable set-up); srgan
  runs ``bench/speed.py``'s step (the code ``srgan-train`` runs) with its defaults. The step time
  is the median of the timed steps after warm-up.
* inference: generator forward on batches of 64x64 LR tiles in ``torch.inference_mode``, output
  megapixels per second.
* scene (``--scene``, 1024 by default): srgan-infer on a 1024x1024 LR uint16 GeoTIFF (tiles of 128
  px with 16 px overlap, 4 per batch: its defaults; reading, blending and writing included) against
  the reference's generator run over the same number of 128 px tiles in batches of 4, in memory.

Each measurement is a fresh subprocess; the two sides alternate for ``--rounds`` rounds (which side
goes first alternates too), the ratios use the medians over rounds, and the spread (min - max over
rounds) is printed and kept. Nothing is downloaded at run time: ``.venv-peer`` must exist.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
BANDS, SCALE, BATCH, LR_SIZE, TILE, TILE_BATCH = 4, 4, 4, 32, 64, 4
# The whole-scene row: srgan-infer's defaults (conf/infer.yaml: tile 128, overlap 16, batch 4).
SCENE_TILE, SCENE_OVERLAP, SCENE_BATCH = 128, 16, 4
# srgan's generator with the reference's kernel sizes and residual scale: the same network.
OURS = ["generator.head_kernel=9", "generator.tail_kernel=9", "generator.res_scale=0.2"]


# --------------------------------------------------------------------------- reference side


def _reference_model() -> Any:
    # wandb is imported by the reference's module but used only to log validation images.
    try:
        import wandb  # noqa: F401
    except ImportError:
        sys.modules["wandb"] = types.ModuleType("wandb")
    import opensr_srgan
    from omegaconf import OmegaConf
    from opensr_srgan.model.SRGAN import SRGAN_model

    base = OmegaConf.load(Path(opensr_srgan.__file__).parent / "configs" / "config_10m.yaml")
    overrides = {
        "Model": {"in_bands": BANDS, "continue_training": False, "load_checkpoint": False},
        "Training": {
            "pretrain_g_only": False,
            "g_pretrain_steps": 0,
            "adv_loss_ramp_steps": 0,
            "EMA": {"enabled": False},
            "Losses": {"l1_weight": 1.0, "sam_weight": 0.0, "perceptual_weight": 0.0, "tv_weight": 0.0},
        },
        "Generator": {
            "model_type": "SRResNet",
            "block_type": "rcab",
            "large_kernel_size": 9,
            "small_kernel_size": 3,
            "n_channels": 64,
            "n_blocks": 16,
            "scaling_factor": SCALE,
        },
        "Discriminator": {"model_type": "standard", "n_blocks": 8, "use_spectral_norm": False},
        "Optimizers": {"gradient_clip_val": 0.0},
        "Logging": {"wandb": {"enabled": False}},
    }
    model = SRGAN_model(config=OmegaConf.merge(base, overrides), mode="train")
    return model


def _batches(n: int) -> list[tuple[Any, Any]]:
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        hr = torch.rand(BATCH, BANDS, LR_SIZE * SCALE, LR_SIZE * SCALE, generator=g)
        out.append((torch.nn.functional.avg_pool2d(hr, SCALE), hr))
    return out


def reference_train(warmup: int, repeats: int) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    torch.manual_seed(0)
    model = _reference_model()
    pool = _batches(4)
    n = warmup + repeats + 1

    class Batches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> Any:
            return pool[i % len(pool)]

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            self.starts.append(time.perf_counter())

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.starts.append(time.perf_counter())

    timer = Timer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(Batches(), batch_size=None, num_workers=0)
    trainer.fit(model, train_dataloaders=loader)
    steps = [b - a for a, b in zip(timer.starts[:-1], timer.starts[1:])]
    times = steps[warmup : warmup + repeats]
    median = statistics.median(times)
    assert model.discriminator.training and not model._pretrain_check(), "not in the adversarial phase"
    return {
        "step_s_median": median,
        "steps_per_s": 1 / median,
        "step_s_all": times,
        "step_gflop": _reference_step_flops(model, pool[0]),
        "g_params": sum(p.numel() for p in model.generator.parameters()),
        "d_params": sum(p.numel() for p in model.discriminator.parameters()),
    }


def _reference_step_flops(model: Any, batch: Any) -> float:
    """FLOPs of one reference training step, driven by hand (its training_step, no Trainer)."""
    from torch.utils.flop_counter import FlopCounterMode

    optimizers = model.configure_optimizers()[0]

    class Strategy:
        _lightning_optimizers = optimizers

        @staticmethod
        def backward(loss: Any, optimizer: Any, *args: Any, **kwargs: Any) -> None:
            loss.backward(*args, **kwargs)

    class FakeTrainer:
        barebones = True  # LightningModule.log returns early
        precision_plugin = None
        strategy = Strategy()
        global_step = 10**6

    FakeTrainer.optimizers = optimizers
    model.trainer = FakeTrainer()
    import warnings

    warnings.filterwarnings("ignore")
    counter = FlopCounterMode(display=False)
    with counter:
        model.on_train_batch_start(batch, 0)
        model.training_step(batch, 0)
    return counter.get_total_flops() / 1e9


def reference_generator(warmup: int, repeats: int) -> dict[str, Any]:
    import torch

    model = _reference_model().eval()
    x = torch.rand(TILE_BATCH, BANDS, TILE, TILE)

    def run() -> None:
        with torch.inference_mode():
            model.generator(x)

    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    mpx = TILE_BATCH * (TILE * SCALE) ** 2 / 1e6
    return {"batch_s_median": median, "output_mpx_per_s": mpx / median, "batch_s_all": times}


def reference_scene(tiles: int, tile: int, batch: int, scene: int) -> dict[str, Any]:
    """The reference's generator over as many tiles as srgan-infer cuts the scene into, in batches
    like srgan-infer's, pixels already in memory: no reading, blending or writing (all of which
    srgan-infer's number includes), so this favours the reference."""
    import torch

    model = _reference_model().eval()
    x = torch.rand(batch, BANDS, tile, tile)
    with torch.inference_mode():
        model.generator(x[:1])  # warm-up
        start = time.perf_counter()
        for first in range(0, tiles, batch):
            model.generator(x[: min(batch, tiles - first)])
        seconds = time.perf_counter() - start
    mpx = (scene * SCALE) ** 2 / 1e6
    return {"seconds": seconds, "output_mpx_per_s": mpx / seconds, "tiles": tiles}


def reference_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import resource

    import torch

    if spec["kind"] == "scene":
        result = reference_scene(spec["tiles"], spec["scene_tile"], spec["scene_batch"], spec["scene"])
    else:
        run = reference_train if spec["kind"] == "train" else reference_generator
        result = run(spec["warmup"], spec["repeats"])
    versions = {}
    for name in ("torch", "pytorch_lightning", "opensr_srgan"):
        try:
            from importlib.metadata import version

            versions[name] = version(name.replace("_", "-"))
        except Exception:  # noqa: BLE001 - a missing version is only reported
            versions[name] = "?"
    return {
        **spec,
        **result,
        "side": "opensr-srgan",
        "versions": versions,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --------------------------------------------------------------------------- driver


def _run(cmd: list[str]) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-worker", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--scene", type=int, default=1024, help="LR size of the whole-scene row (0: skip it)")
    args = parser.parse_args()
    if args.reference_worker:
        print(json.dumps(reference_worker(json.loads(args.reference_worker))))
        return
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} is missing: run `make bench-peer` (it creates .venv-peer)")

    from srgan.tiling import tile_boxes

    speed = str(ROOT / "bench" / "speed.py")
    kinds = ("train", "generator") + (("scene",) if args.scene else ())
    scene = {"scene": args.scene, "scene_tile": SCENE_TILE, "scene_batch": SCENE_BATCH}
    scene["tiles"] = len(tile_boxes(args.scene, args.scene, SCENE_TILE, SCENE_OVERLAP)) if args.scene else 0
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for kind in kinds:
            spec = {"kind": kind, "warmup": args.warmup, "repeats": args.repeats, **scene}
            ours_spec = {**spec, "model": "rcab", "variant": "default", "opts": {"overrides": OURS}, "device": "cpu"}
            ours_spec.update(train_batch=BATCH, infer_batch=TILE_BATCH)
            # The two sides alternate which goes first, round by round.
            sides = [("theirs", spec), ("ours", ours_spec)]
            for side, side_spec in sides if r % 2 == 0 else sides[::-1]:
                if side == "theirs":
                    row = _run([str(PEER_PYTHON), __file__, "--reference-worker", json.dumps(side_spec)])
                else:
                    row = {**_run([sys.executable, speed, "--worker", json.dumps(side_spec)]), "side": "srgan"}
                print(json.dumps(row), flush=True)
                rows.setdefault((kind, row["side"]), []).append(row)

    def med(kind: str, side: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[(kind, side)])

    summary = {
        "train_steps_per_s": {s: med("train", s, "steps_per_s") for s in ("opensr-srgan", "srgan")},
        "train_step_gflop": {s: rows[("train", s)][0].get("step_gflop") for s in ("opensr-srgan", "srgan")},
        "train_peak_rss_mb": {s: med("train", s, "peak_rss_mb") for s in ("opensr-srgan", "srgan")},
        "infer_output_mpx_per_s": {s: med("generator", s, "output_mpx_per_s") for s in ("opensr-srgan", "srgan")},
        "infer_peak_rss_mb": {s: med("generator", s, "peak_rss_mb") for s in ("opensr-srgan", "srgan")},
    }
    summary["train_speedup"] = summary["train_steps_per_s"]["srgan"] / summary["train_steps_per_s"]["opensr-srgan"]
    summary["infer_speedup"] = (
        summary["infer_output_mpx_per_s"]["srgan"] / summary["infer_output_mpx_per_s"]["opensr-srgan"]
    )
    summary["spread"] = {
        f"{kind}/{side}": [min(v), max(v)]
        for (kind, side), rs in rows.items()
        for v in [[x.get("steps_per_s") or x["output_mpx_per_s"] for x in rs]]
    }
    if args.scene:
        summary["scene_output_mpx_per_s"] = {s: med("scene", s, "output_mpx_per_s") for s in ("opensr-srgan", "srgan")}
        summary["scene_speedup"] = (
            summary["scene_output_mpx_per_s"]["srgan"] / summary["scene_output_mpx_per_s"]["opensr-srgan"]
        )
        summary["scene"] = scene
    summary["machine_cpus"] = os.cpu_count()
    summary["reference_versions"] = rows[("train", "opensr-srgan")][0]["versions"]
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": {f"{k}/{s}": v for (k, s), v in rows.items()}}))
    print(json.dumps(summary))
    t, i = summary["train_steps_per_s"], summary["infer_output_mpx_per_s"]
    g, m = summary["train_step_gflop"], summary["train_peak_rss_mb"]
    print(f"\nmedians over {args.rounds} rounds, each the median of {args.repeats} timed steps / batches")
    print("| | opensr-srgan 0.4.3 | srgan | srgan / reference |")
    print("|---|---:|---:|---:|")
    print(f"| GAN training steps/s | {t['opensr-srgan']:.3f} | {t['srgan']:.3f} | {summary['train_speedup']:.2f}x |")
    print(f"| GFLOP per step (counted) | {g['opensr-srgan'] or 0:.1f} | {g['srgan'] or 0:.1f} | |")
    print(f"| training peak RSS MB | {m['opensr-srgan']:.0f} | {m['srgan']:.0f} | |")
    print(f"| inference output Mpx/s | {i['opensr-srgan']:.3f} | {i['srgan']:.3f} | {summary['infer_speedup']:.2f}x |")
    if args.scene:
        c = summary["scene_output_mpx_per_s"]
        print(
            f"| {args.scene}x{args.scene} LR scene, output Mpx/s (srgan: srgan-infer, GeoTIFF in and out; reference: "
            f"its generator over the same {scene['tiles']} tiles in memory) | {c['opensr-srgan']:.3f} "
            f"| {c['srgan']:.3f} | {summary['scene_speedup']:.2f}x |"
        )
    print("\nspread over rounds (min - max):")
    for key, (lo, hi) in summary["spread"].items():
        print(f"  {key}: {lo:.3f} - {hi:.3f}")


if __name__ == "__main__":
    main()
